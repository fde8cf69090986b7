"""Weekly retraining over the whole graph from training_dataset on."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from pipelines.jobs import retrain_job

weekly_retraining = ScheduleDefinition(job=retrain_job, cron_schedule="0 3 * * 1", execution_timezone="UTC",
                                       default_status=DefaultScheduleStatus.STOPPED)
