"""The inbox sensor: one dynamic partition per new study, added once its files stopped changing, and one
``ingest_delivery`` run for all the studies that settled in the same tick. Once a delivery run ends, a
``retrain`` run follows; its ``trained_model`` step trains only when the dataset version or the params
changed, and otherwise says "skipped: nothing changed since version N"."""


import hashlib
import json
import time

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)

from pipelines.assets import STUDY_PARTITIONS, study_partitions
from pipelines.delivery import delivery_job, delivery_run_config
from pipelines.jobs import retrain_job
from pipelines.resources import PipelineSettings


def stable_studies(studies: dict, signatures: dict, previous: dict, now: float, settle: float) -> tuple[list, dict]:
    """Keys whose folder signature is unchanged since the last tick and at least ``settle`` s old.

    ``previous`` maps key -> {"sig": ..., "since": t}; returns (ready keys, new cursor state).
    """
    state, ready = {}, []
    for key in studies:
        sig = signatures[key]
        old = previous.get(key)
        since = old["since"] if old and old["sig"] == sig else now
        state[key] = {"sig": sig, "since": since}
        if old and old["sig"] == sig and sig["files"] > 0 and now - since >= settle:
            ready.append(key)
    return ready, state


@sensor(job=delivery_job, minimum_interval_seconds=30, default_status=DefaultSensorStatus.STOPPED)
def inbox_sensor(context: SensorEvaluationContext, settings: PipelineSettings):
    from pipelines.steps.ingest import deidentifier, folder_signature, list_studies

    params = settings.params()
    studies = list_studies(params, deidentifier(params))
    known = set(context.instance.get_dynamic_partitions(STUDY_PARTITIONS))
    pending = {k: v for k, v in studies.items() if k not in known}
    previous = json.loads(context.cursor) if context.cursor else {}
    ready, state = stable_studies(pending, {k: folder_signature(v) for k, v in pending.items()}, previous,
                                  time.time(), float(params["source"]["settle_seconds"]))
    if not ready:
        return SensorResult(skip_reason=SkipReason(f"{len(pending)} new study folder(s), none settled yet"),
                            cursor=json.dumps(state))
    run_key = "delivery-" + hashlib.sha256(" ".join(ready).encode()).hexdigest()[:16]
    return SensorResult(run_requests=[RunRequest(run_key=run_key, run_config=delivery_run_config(ready))],
                        dynamic_partitions_requests=[study_partitions.build_add_request(ready)],
                        cursor=json.dumps({k: v for k, v in state.items() if k not in ready}))


def retrain_request(context: RunStatusSensorContext) -> RunRequest:
    """One ``retrain`` run per finished delivery run."""
    return RunRequest(run_key=f"retrain-after-{context.dagster_run.run_id}")


@run_status_sensor(run_status=DagsterRunStatus.SUCCESS, monitored_jobs=[delivery_job], request_job=retrain_job,
                   default_status=DefaultSensorStatus.STOPPED)
def retrain_after_delivery(context: RunStatusSensorContext) -> RunRequest:
    """A delivery was ingested: retrain (or skip, saying why)."""
    return retrain_request(context)


@run_status_sensor(run_status=DagsterRunStatus.FAILURE, monitored_jobs=[delivery_job], request_job=retrain_job,
                   default_status=DefaultSensorStatus.STOPPED)
def retrain_after_partial_delivery(context: RunStatusSensorContext) -> RunRequest:
    """A delivery in which some study failed: the others were ingested, so retrain on them too."""
    return retrain_request(context)
