"""Dagster side of the clinical loop: the PACS resource, the ``inference`` job and the PACS sensor.

The sensor polls the PACS by QIDO-RS. Its cursor holds the champion version it last looked for
and the pseudonyms of the studies already considered for it, so a study is queried once per
champion. For each new study whose series match the champion's input and lack its SEG it adds a
``pacs_study`` partition (the pseudonym; the real UID stays in the PACS) and requests one
``inference`` run. The run resolves ``@champion`` at its start, segments the study
(``pipelines/inference.py``) and reports per-series status and refusal reasons as metadata.
"""


import json
import tempfile
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    ConfigurableResource,
    DefaultSensorStatus,
    DynamicPartitionsDefinition,
    MaterializeResult,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset,
    define_asset_job,
    sensor,
)

from medcore.dicom.web import Pacs, PacsSettings
from pipelines.params import DEFAULTS
from pipelines.resources import PipelineSettings

PACS_PARTITIONS = "pacs_study"
pacs_study_partitions = DynamicPartitionsDefinition(name=PACS_PARTITIONS)


class PacsResource(ConfigurableResource):
    """The PACS's DICOMweb endpoint; empty/zero fields take params.yaml's ``pacs`` values.

    ``auth_header`` is the full Authorization header value; left empty it is read from the
    environment variable named by ``pacs.auth_header_env`` (secrets stay out of params and Dagster)."""

    url: str = ""
    auth_header: str = ""
    timeout_seconds: float = 0.0
    retries: int = -1

    def settings(self, params: dict) -> PacsSettings:
        from pipelines.inference import pacs_settings

        base = pacs_settings(params, self.url or None)
        return PacsSettings(url=base.url, auth_header=self.auth_header or base.auth_header,
                            timeout=self.timeout_seconds or base.timeout,
                            retries=self.retries if self.retries >= 0 else base.retries, backoff=base.backoff)

    def client(self, params: dict) -> Pacs:
        return Pacs(self.settings(params))


@asset(partitions_def=pacs_study_partitions, group_name="inference")
def pacs_segmentation(context: AssetExecutionContext, settings: PipelineSettings,
                      pacs: PacsResource) -> MaterializeResult:
    """The champion's DICOM SEG of one PACS study, stored back in the PACS (STOW-RS) and verified there."""
    from medcore.inferers.model_dir import load_model_dir
    from pipelines.inference import find_study, resolve_champion, segment_study
    from pipelines.steps.ingest import deidentifier

    params = settings.params()
    deid = deidentifier(params)
    client = pacs.client(params)
    with tempfile.TemporaryDirectory(prefix="medcore-champion-") as tmp:
        champion = resolve_champion(params, Path(tmp))
        context.log.info(f"{context.partition_key}: champion {champion.name} version {champion.version}")
        model, spec = load_model_dir(champion.model_dir, device=_device())
        study = find_study(client, deid, context.partition_key, champion.modality, champion.min_slices)
        outcome = segment_study(client, study, champion, model, spec, deid, device=_device())
    context.log.info(outcome.line())
    return MaterializeResult(metadata={
        "status": outcome.status, "model": champion.name, "model_version": champion.version,
        "reason": outcome.reason, "stored": sum(s.status == "stored" for s in outcome.series),
        "series": json.dumps([{"series": s.series, "status": s.status, "reason": s.reason,
                               "seconds": {k: round(v, 3) for k, v in s.seconds.items()}} for s in outcome.series]),
    })


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


inference_job = define_asset_job("inference", selection=[pacs_segmentation], partitions_def=pacs_study_partitions,
                                 description="retrieve a PACS study, segment it with @champion, store the SEG")


def sensor_step(cursor: dict, version: str, studies: dict) -> tuple[list[str], dict]:
    """Keys to run (not yet considered for this champion version and not yet segmented) and the new cursor."""
    seen = set(cursor.get("seen", [])) if cursor.get("version") == version else set()
    run = sorted(k for k, s in studies.items() if k not in seen and not s.done)
    return run, {"version": version, "seen": sorted(seen | set(studies))}


def _pacs_sensor(context: SensorEvaluationContext, settings: PipelineSettings, pacs: PacsResource):
    """One ``inference`` run per new PACS study that matches the champion's input and lacks its SEG."""
    from pipelines.inference import champion_input, pending_studies
    from pipelines.steps.ingest import deidentifier

    params = settings.params()
    try:
        ref = champion_input(params)
    except RuntimeError as error:  # no champion yet: nothing to segment with
        return SensorResult(skip_reason=SkipReason(str(error)), cursor=context.cursor)
    name, version = ref.name, ref.version
    cursor = json.loads(context.cursor) if context.cursor else {}
    skip = set(cursor.get("seen", [])) if cursor.get("version") == version else set()
    studies = pending_studies(pacs.client(params), deidentifier(params), name, version, ref.modality,
                              ref.min_slices, skip=skip)
    run, state = sensor_step(cursor, version, studies)
    if not run:
        return SensorResult(skip_reason=SkipReason(f"no new PACS study for {name} v{version}"),
                            cursor=json.dumps(state))
    known = set(context.instance.get_dynamic_partitions(PACS_PARTITIONS))
    new = [k for k in run if k not in known]
    return SensorResult(run_requests=[RunRequest(partition_key=k, run_key=f"{k}-v{version}") for k in run],
                        dynamic_partitions_requests=[pacs_study_partitions.build_add_request(new)] if new else [],
                        cursor=json.dumps(state))


def make_pacs_sensor(poll_seconds: int) -> SensorDefinition:
    """The PACS sensor, polling every ``poll_seconds`` (params ``pacs.poll_seconds``, read when the
    definitions are built, not at import)."""
    return sensor(name="pacs_sensor", job=inference_job, minimum_interval_seconds=int(poll_seconds),
                  default_status=DefaultSensorStatus.STOPPED)(_pacs_sensor)


pacs_sensor = make_pacs_sensor(DEFAULTS["pacs"]["poll_seconds"])  # the built-in interval; definitions use params

