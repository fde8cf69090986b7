"""The ``ingest_delivery`` job: a delivery of studies ingested in one Dagster run, one step per study.

Each step does for its study what the four partitioned study assets do (``raw_dicom`` -> ``series_index`` ->
``nifti_volumes`` -> ``labels``), with the same functions and the same blocking checks, and records each
as that asset's materialization (and check evaluation) for the study's partition. A study that fails, or
fails a blocking check, fails its own step only: the others go on, and the run names it. The
``ingest_study`` asset job re-materialises one study from the UI.
"""

from collections.abc import Callable

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetKey,
    AssetMaterialization,
    Config,
    DynamicOut,
    DynamicOutput,
    Failure,
    MaterializeResult,
    OpExecutionContext,
    job,
    op,
)
from pydantic import Field

from pipelines.assets import labels_result, nifti_volumes_result, raw_dicom_result, series_index_result
from pipelines.checks import alignment_result, geometry_result, phi_result
from pipelines.resources import PipelineSettings

DATA_VERSION_TAG = "dagster/data_version"


class DeliveryConfig(Config):
    studies: list[str] = Field(description="partition keys of the studies to ingest (study-...)")


def delivery_run_config(studies: list[str]) -> dict:
    """The run config of ``ingest_delivery`` for these studies."""
    return {"ops": {"delivery_studies": {"config": {"studies": list(studies)}}}}


@op(out=DynamicOut(str))
def delivery_studies(config: DeliveryConfig):
    """One output per study of the delivery: the study steps fan out from here."""
    for key in config.studies:
        yield DynamicOutput(key, mapping_key=key.replace("-", "_"))


def _record(context: OpExecutionContext, asset: str, key: str, result: MaterializeResult) -> None:
    tags = {DATA_VERSION_TAG: result.data_version.value} if result.data_version else None
    context.log_event(AssetMaterialization(asset_key=asset, partition=key, metadata=result.metadata, tags=tags))


def _check(context: OpExecutionContext, asset: str, name: str, key: str, result: AssetCheckResult) -> None:
    evaluation = AssetCheckEvaluation(asset_key=AssetKey(asset), check_name=name, passed=result.passed,
                                      metadata=result.metadata, blocking=True, partition=key)
    context.log_event(evaluation)  # type: ignore[arg-type]  # recorded as the partition's check (Dagster 1.13)
    if not result.passed:
        shown = {k: getattr(v, "value", v) for k, v in (result.metadata or {}).items()}
        raise Failure(f"study {key}: the blocking check {name} failed {shown}; the study stays out of the "
                      "dataset. Fix or remove its files, then re-materialise its partition (job ingest_study).")


@op
def ingest_one_study(context: OpExecutionContext, settings: PipelineSettings, key: str) -> str:
    """raw_dicom, series_index, nifti_volumes (with its geometry and PHI checks) and labels (with its
    alignment check) for one study; returns the study's key."""
    params, deid = settings.params(), settings.deidentifier()
    steps: list[tuple[str, Callable[[], MaterializeResult]]] = [
        ("raw_dicom", lambda: raw_dicom_result(params, key, deid)),
        ("series_index", lambda: series_index_result(params, key, deid)),
        ("nifti_volumes", lambda: nifti_volumes_result(params, key, deid, context.log))]
    for asset, step in steps:
        _record(context, asset, key, step())
    _check(context, "nifti_volumes", "geometry_sanity", key, geometry_result(params, key))
    _check(context, "nifti_volumes", "phi_scan", key, phi_result(params, key, deid))
    _record(context, "labels", key, labels_result(params, key, deid))
    _check(context, "labels", "label_alignment", key, alignment_result(params, key))
    return key


def failed_studies(result) -> dict[str, str]:
    """``{study key: reason}`` for each study step of an ``ingest_delivery`` run that failed."""
    failed = {}
    for event in result.get_step_failure_events():
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:  # Dagster wraps the study's own error
            error = error.cause
        key = event.step_key.split("[", 1)[-1].rstrip("]").replace("_", "-")
        failed[key] = error.message.strip() if error is not None else "see the run's log"
    return failed


@job(name="ingest_delivery", description="a delivery of studies in one run: one step per study, "
                                         "raw_dicom -> series_index -> nifti_volumes -> labels")
def delivery_job():
    delivery_studies().map(ingest_one_study)
