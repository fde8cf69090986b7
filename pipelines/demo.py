"""``python -m pipelines demo``: synthetic studies into the inbox, then the whole graph in-process
against the real SQLite Dagster instance under ``dagster_home/``; prints where the model is."""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.params import PROJECT_ROOT, resolve


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


def run_pipeline(params: dict, instance, settings=None) -> dict:
    """Add a partition per inbox study, ingest each, then run the retraining job; return the registration."""
    from pipelines.assets import study_partitions
    from pipelines.definitions import make_definitions
    from pipelines.resources import PipelineSettings
    from pipelines.steps.ingest import deidentifier, list_studies
    from pipelines.steps.layout import Layout, read_json

    settings = settings or PipelineSettings(params_file=params["params_file"], output_dir=str(params["output_dir"]))
    defs = make_definitions(settings)
    keys = sorted(list_studies(params, deidentifier(params)))
    known = set(instance.get_dynamic_partitions(study_partitions.name))
    new = [k for k in keys if k not in known]
    if new:
        instance.add_dynamic_partitions(study_partitions.name, new)
    study_job = defs.resolve_job_def("ingest_study")
    for key in keys:
        result = study_job.execute_in_process(partition_key=key, instance=instance, raise_on_error=True)
        assert result.success
    result = defs.resolve_job_def("retrain").execute_in_process(instance=instance, raise_on_error=True)
    assert result.success
    return read_json(Layout.from_params(params).registered_json) | {"dagster_run_id": result.run_id}


def run_demo(params: dict) -> int:
    from dagster import DagsterInstance

    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_ROOT / "dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)  # must be absolute
    home.mkdir(parents=True, exist_ok=True)
    write_inbox(params)
    with DagsterInstance.get() as instance:
        reg = run_pipeline(params, instance)
    print(f"\nRegistered model: {reg['model_name']} version {reg['version']} ({reg['alias']}: {reg['reason']})")
    print(f"  load it with mlflow.pyfunc.load_model('{reg['model_uri']}') after mlflow.set_tracking_uri('{reg['tracking_uri']}')")
    print(f"  source {reg['source']}, artifacts under {reg['artifact_root']}")
    print(f"  MLflow UI: .venv/bin/mlflow ui --backend-store-uri {reg['tracking_uri']}")
    print(f"  Dagster UI: DAGSTER_HOME={home} .venv/bin/dagster dev -m pipelines.definitions")
    return 0
