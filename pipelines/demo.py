"""``python -m pipelines run``: the whole graph in-process on whatever is in the inbox (ingestion per study,
then retraining), against the real SQLite Dagster instance under ``dagster_home/``; prints where the model
is. ``python -m pipelines demo`` writes synthetic studies into the inbox first."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pipelines.params import PROJECT_ROOT, resolve
from pipelines.steps.results import Registration, load


def write_inbox(params: dict) -> Path:
    """Synthetic CT studies with labels into the inbox (kept if already there)."""
    from medcore.data.synthetic import write_synthetic_studies

    dicom_dir = resolve(params, params["source"]["dicom_dir"])
    manifest = resolve(params, params["source"]["label_manifest"])
    if dicom_dir.is_dir() and any(dicom_dir.iterdir()) and manifest.is_file():
        return dicom_dir
    if dicom_dir.parent != manifest.parent.parent:
        raise ValueError("the demo writes synthetic studies as <root>/dicom and <root>/labels; set source.dicom_dir "
                         "and source.label_manifest to siblings under one folder")
    syn = params["synthetic"]
    write_synthetic_studies(dicom_dir.parent, n_patients=int(syn["n_patients"]), seed=int(syn["seed"]),
                            shape=tuple(syn["shape"]), progress=True)
    return dicom_dir


def recover(instance) -> list:
    """Report FAILED the runs whose process died (SIGKILL) and say so on stderr; see pipelines/recovery.py."""
    from pipelines.recovery import recover_dead_runs

    done = recover_dead_runs(instance)
    for r in done:
        if r.action == "failed":
            print(f"Dagster run {r.run_id} ({r.job_name}) was left {r.status} by a killed process; marked FAILED "
                  f"({r.why}). Safe to re-run.", file=sys.stderr)
    return done


def ingest_delivery(params: dict, instance, defs, tags: dict) -> dict[str, str]:
    """Add a partition per new inbox study and ingest, in one ``ingest_delivery`` run, every study not yet
    ingested (new, changed since, or failed before). Returns ``{study key: reason}`` for the studies whose
    step failed, after saying so on stderr; the other studies are ingested all the same."""
    from dagster import AssetKey

    from pipelines.assets import STUDY_PARTITIONS
    from pipelines.delivery import delivery_run_config, failed_studies
    from pipelines.steps.ingest import deidentifier, is_ingested, list_studies

    studies = list_studies(params, deidentifier(params))
    known = set(instance.get_dynamic_partitions(STUDY_PARTITIONS))
    new = [k for k in studies if k not in known]
    if new:
        instance.add_dynamic_partitions(STUDY_PARTITIONS, new)
    done = instance.get_materialized_partitions(AssetKey("labels"))
    todo = [k for k, folder in studies.items() if k not in done or not is_ingested(params, k, folder)]
    if not todo:
        return {}
    print(f"ingesting {len(todo)} of {len(studies)} inbox studies in one run", file=sys.stderr)
    result = defs.resolve_job_def("ingest_delivery").execute_in_process(
        run_config=delivery_run_config(todo), instance=instance, tags=tags, raise_on_error=False)
    failed = failed_studies(result)
    for key, reason in failed.items():
        print(f"study {key} was not ingested (run {result.run_id}): {reason}", file=sys.stderr)
    return failed


def run_pipeline(params: dict, instance, settings=None, force: bool = False) -> Registration | None:
    """Fail runs left STARTED by a killed process, ingest the inbox's new studies in one run, then run the
    retraining job; return the registration. Every run is tagged with this process (pipelines/recovery.py)."""
    from dagster import AssetKey

    from pipelines.definitions import make_definitions
    from pipelines.recovery import process_tags
    from pipelines.resources import PipelineSettings
    from pipelines.steps.layout import Layout

    recover(instance)
    tags = process_tags()
    settings = settings or PipelineSettings(params_file=params["params_file"], output_dir=str(params["output_dir"]))
    defs = make_definitions(settings)
    ingest_delivery(params, instance, defs, tags)
    config = {"ops": {name: {"config": {"force": force}} for name in ("trained_model", "evaluation",
                                                                       "registered_model")}}
    result = defs.resolve_job_def("retrain").execute_in_process(instance=instance, tags=tags, raise_on_error=False,
                                                                run_config=config)
    materialised = {e.asset_key for e in result.get_asset_materialization_events()}
    gate = [c for c in result.get_asset_check_evaluations() if c.check_name == "minimum_dice" and not c.passed]
    if gate:
        shown = {k: v.value for k, v in gate[0].metadata.items()}
        raise RuntimeError(f"the trained model was not registered: the blocking check minimum_dice failed {shown}; "
                           "train longer (train.time_budget_minutes) or lower evaluate.min_dice")
    if not result.success:
        errors = [f"{e.step_key}: {e.step_failure_data.error.message.strip()}" for e in
                  result.get_step_failure_events() if e.step_failure_data.error is not None]
        raise RuntimeError(f"the retraining run {result.run_id} failed ({'; '.join(errors) or 'see its log'}); "
                           f"its log is in the Dagster UI (DAGSTER_HOME={instance.root_directory})")
    if AssetKey("trained_model") not in materialised:
        reason = next((e.message for e in instance.all_logs(result.run_id) if (e.message or "").startswith(
            "skipped:")), "skipped")
        print(reason)
        return None
    return load(Layout.from_params(params).registered_json, Registration)


def dagster_home() -> Path:
    """``$DAGSTER_HOME`` or the project's ``dagster_home/``, made absolute (Dagster requires it) and exported."""
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / "dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    return home


def run_recover() -> int:
    """``python -m pipelines recover``: fail the runs of ``dagster_home/`` whose process died; list the
    unfinished runs and what was done with each."""
    from dagster import DagsterInstance

    dagster_home()
    with DagsterInstance.get() as instance:
        done = recover(instance)
    for r in done:
        action = "marked FAILED" if r.action == "failed" else "left alone"
        print(f"{r.run_id} {r.job_name} {r.status}: {action} ({r.why})")
    if not done:
        print("no unfinished Dagster runs")
    return 0


def run_demo(params: dict) -> int:
    """``python -m pipelines demo``: synthetic studies into the inbox, then :func:`run_inbox`."""
    write_inbox(params)
    return run_inbox(params)


def run_inbox(params: dict, force: bool = False) -> int:
    """``python -m pipelines run``: ingest every inbox study, retrain if anything changed, and say where the
    model is (or why nothing was trained)."""
    from dagster import DagsterInstance

    home = dagster_home()
    with DagsterInstance.get() as instance:
        reg = run_pipeline(params, instance, force=force)
    if reg is None:
        return 0
    print(f"\nRegistered model: {reg.model_name} version {reg.version} ({reg.alias}: {reg.reason})")
    print(f"  load it with mlflow.pyfunc.load_model('{reg.model_uri}') "
          f"after mlflow.set_tracking_uri('{reg.tracking_uri}')")
    print(f"  source {reg.source}, artifacts under {reg.artifact_root}")
    print(f"  MLflow UI: .venv/bin/mlflow ui --backend-store-uri {reg.tracking_uri}")
    print(f"  Dagster UI: DAGSTER_HOME={home} .venv/bin/dagster dev -m pipelines.definitions")
    return 0
