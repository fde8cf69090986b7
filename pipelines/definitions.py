"""The one Dagster ``Definitions`` of the project (``dagster dev -m pipelines.definitions``)."""

from dagster import Definitions, PipesSubprocessClient, in_process_executor

from pipelines.assets import STUDY_ASSETS, TRAINING_ASSETS
from pipelines.checks import ALL_CHECKS
from pipelines.jobs import retrain_job, study_job
from pipelines.resources import PipelineSettings
from pipelines.schedules import weekly_retraining
from pipelines.sensors import inbox_sensor


def make_definitions(settings: PipelineSettings | None = None) -> Definitions:
    return Definitions(
        assets=[*STUDY_ASSETS, *TRAINING_ASSETS], asset_checks=ALL_CHECKS, jobs=[study_job, retrain_job],
        schedules=[weekly_retraining], sensors=[inbox_sensor],
        resources={"settings": settings or PipelineSettings(), "pipes_subprocess_client": PipesSubprocessClient()},
        # SQLite locks under concurrent writers: one process runs a whole run (ARCHITECTURE, Known traps)
        executor=in_process_executor,
    )


defs = make_definitions()
