"""``python -m pipelines infer --pacs URL``: the ``inference`` job, in-process, once per study that the
current champion has not segmented; one line per study (stored, already present, refused with the reason)."""

from __future__ import annotations

import sys

from pipelines.pacs import PACS_PARTITIONS, PacsResource, inference_job
from pipelines.resources import PipelineSettings


def run_infer(params: dict, url: str | None = None) -> int:
    """``python -m pipelines infer --pacs URL``: the ``inference`` job in-process, once per study the
    current champion has not segmented; one line per study. Exit status 1 if any run failed."""
    from dagster import DagsterInstance

    from medcore.dicom.web import PacsError
    from pipelines.definitions import make_definitions
    from pipelines.demo import dagster_home, recover
    from pipelines.inference import PRESENT, champion_input, outcome_line, pending_studies
    from pipelines.recovery import process_tags
    from pipelines.steps.ingest import deidentifier

    resource = PacsResource(url=url or "")
    try:
        ref = champion_input(params)
        name, version = ref.name, ref.version
        studies = pending_studies(resource.client(params), deidentifier(params), name, version, ref.modality,
                                  ref.min_slices)
    except (PacsError, RuntimeError) as error:
        print(f"pipelines infer: {error}", file=sys.stderr)
        return 1
    if not studies:
        print(f"no study in the PACS matches {name} v{version}'s input ({ref.modality})")
    dagster_home()
    failed = 0
    with DagsterInstance.get() as instance:
        recover(instance)
        settings = PipelineSettings(params_file=params["params_file"], output_dir=str(params["output_dir"]))
        job = make_definitions(settings, pacs=resource).resolve_job_def(inference_job.name)
        known = set(instance.get_dynamic_partitions(PACS_PARTITIONS))
        for key, study in sorted(studies.items()):
            if study.done:
                print(outcome_line(key, PRESENT, "", name, version), flush=True)
                continue
            if key not in known:
                instance.add_dynamic_partitions(PACS_PARTITIONS, [key])
            result = job.execute_in_process(partition_key=key, instance=instance, tags=process_tags(),
                                            raise_on_error=False)
            if not result.success:
                failed += 1
                errors = [e.step_failure_data.error.message.strip() for e in result.get_step_failure_events()
                          if e.step_failure_data.error is not None]
                print(f"{key}: failed ({'; '.join(errors) or 'see the Dagster run ' + result.run_id})", flush=True)
                continue
            meta = result.get_asset_materialization_events()[0].materialization.metadata
            status, reason, model, model_version = (str(meta[k].value) for k in
                                                    ("status", "reason", "model", "model_version"))
            print(outcome_line(key, status, reason, model, model_version), flush=True)
    return 1 if failed else 0
