"""Acceptance 1 and 6: Definitions load; the whole graph materialises; the registered model predicts; no PHI."""

from __future__ import annotations

import base64
import gzip
import io
import json
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import yaml
from dagster import AssetKey

ALL_ASSETS = ["raw_dicom", "series_index", "nifti_volumes", "labels", "training_dataset", "preprocessed_cache",
              "trained_model", "evaluation", "registered_model"]


def test_definitions_load_lazily():
    import dagster as dg

    from pipelines.definitions import defs as lazy

    defs = lazy()
    assert isinstance(defs, dg.Definitions)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {*ALL_ASSETS, "pacs_segmentation", "federated_model"}
    assert defs.resolve_job_def("retrain") is not None and defs.resolve_job_def("ingest_study") is not None
    assert defs.resolve_job_def("inference") is not None and defs.resolve_sensor_def("pacs_sensor") is not None
    assert defs.resolve_job_def("federate") is not None
    checks = {k.name for k in defs.resolve_asset_graph().asset_check_keys}
    assert checks == {"geometry_sanity", "phi_scan", "label_alignment", "minimum_dice"}


def test_string_asset_selection_works():
    """The antlr4 trap: string selections need antlr4 4.13 in the Dagster environment."""
    from dagster import AssetSelection

    from pipelines.definitions import make_definitions

    selected = AssetSelection.from_string("key:training_dataset+").resolve(make_definitions().resolve_asset_graph())
    assert AssetKey("registered_model") in selected


def test_every_asset_materialised(pipeline_run):
    instance = pipeline_run["instance"]
    studies = instance.get_dynamic_partitions("study")
    assert len(studies) == pipeline_run["manifest"].n_studies >= 3
    for name in ALL_ASSETS:
        assert instance.get_latest_materialization_event(AssetKey(name)) is not None, name
    for name in ALL_ASSETS[:4]:
        mats = instance.fetch_materializations(AssetKey(name), limit=100).records
        assert {m.partition_key for m in mats} == set(studies), name
    from dagster import RunsFilter

    deliveries = instance.get_runs(RunsFilter(job_name="ingest_delivery"))
    assert len(deliveries) == 1 and deliveries[0].is_success  # the whole delivery in one run
    assert not instance.get_runs(RunsFilter(job_name="ingest_study"))  # not a run per study
    steps = {s.step_key for s in instance.get_run_step_stats(deliveries[0].run_id)}
    assert {f"ingest_one_study[{k.replace('-', '_')}]" for k in studies} <= steps


def test_plan_split_and_class_names_come_from_the_data(pipeline_run):
    out = Path(pipeline_run["root"]) / "outputs" / "pipeline"
    dataset = Path(pipeline_run["root"]) / "data" / "dataset"
    meta = pipeline_run["instance"].get_latest_materialization_event(AssetKey("trained_model")) \
        .asset_materialization.metadata
    plan = meta["plan"].value
    assert plan["modality"] == "CT" and plan["normalization"]["kind"] == "ct"  # from the DICOM headers
    assert plan["labels"] == {"background": 0, "liver": 1, "spleen": 2, "kidney_left": 3, "kidney_right": 4}
    assert plan["patch_size"] == [32, 32, 16]  # the params' override; the rest is planned
    assert "CT: clip" in meta["plan_reasons"].value
    version = json.loads((out / "dataset_version.json").read_text())
    split = json.loads((dataset / "split.json").read_text())["patients"]
    assert version["test_patients"] == sum(s == "test" for s in split.values()) >= 1
    assert version["train_patients"] == sum(s == "train" for s in split.values()) >= 1
    data = json.loads((dataset / "dataset.json").read_text())
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == data["numTest"] == len(data["test"]) == version["test_cases"]
    assert not {t["image"] for t in data["training"]} & {t["image"] for t in data["test"]}


def test_dataset_is_dvc_tracked_and_pushed(pipeline_run):
    out = Path(pipeline_run["root"]) / "outputs" / "pipeline"
    dataset = Path(pipeline_run["root"]) / "data" / "dataset"
    dvc_file = yaml.safe_load((dataset.parent / "dataset.dvc").read_text())
    md5 = dvc_file["outs"][0]["md5"]
    remote = Path(pipeline_run["root"]) / "dvc-remote"
    labelled = [s for s in pipeline_run["manifest"].series if s.mask]
    digest = md5.replace(".dir", "")
    assert (remote / "files" / "md5" / digest[:2] / (digest[2:] + ".dir")).is_file()  # pushed: the dir manifest
    assert len([p for p in remote.rglob("*") if p.is_file()]) > len(labelled) * 2
    version = json.loads((out / "dataset_version.json").read_text())
    meta = pipeline_run["instance"].get_latest_materialization_event(AssetKey("training_dataset")) \
        .asset_materialization.metadata
    assert meta["dataset_hash"].value == version["dataset_hash"]
    data = json.loads((dataset / "dataset.json").read_text())
    assert data["numTraining"] + data["numTest"] == len(data["training"]) + len(data["test"]) == version["cases"] \
        == len(labelled)


def test_training_ran_two_processes_with_live_progress(pipeline_run):
    instance = pipeline_run["instance"]
    meta = instance.get_latest_materialization_event(AssetKey("trained_model")).asset_materialization.metadata
    assert meta["world_size"].value == 2 and meta["nproc"].value == 2
    run_id = pipeline_run["result"].lineage["dagster_run_id"]
    logs = [e.user_message for e in instance.all_logs(run_id)]
    assert any("epoch finished: epoch=0" in m for m in logs)
    assert any("epoch finished: epoch=1" in m for m in logs)


def test_evaluation_metadata_and_plots(pipeline_run):
    meta = (
        pipeline_run["instance"].get_latest_materialization_event(AssetKey("evaluation")).asset_materialization.metadata
    )
    for key in (
        "plot_dice_distribution",
        "plot_training_curves",
        "plot_overlay_best",
        "plot_overlay_worst",
        "per_case",
    ):
        assert key in meta
    out = Path(pipeline_run["root"]) / "outputs" / "pipeline" / "evaluation"
    table = pd.read_csv(out / "per_case.csv")
    assert set(table["class"]) == {"liver", "spleen", "kidney_left", "kidney_right"}
    assert np.isclose(meta["mean_dice"].value, json.loads((out / "summary.json").read_text())["mean_dice"])


def test_registered_model_loads_by_alias_and_predicts_dicom(pipeline_run, tmp_path):
    import mlflow

    reg = pipeline_run["result"]
    assert reg.alias == "champion"
    mlflow.set_tracking_uri(reg.tracking_uri)
    mlflow.set_registry_uri(reg.tracking_uri)
    client = mlflow.MlflowClient(reg.tracking_uri, reg.tracking_uri)
    version = client.get_model_version_by_alias(reg.model_name, "champion")
    for tag in ("dataset_hash", "code_commit", "dagster_run_id", "training_key", "evaluation_set"):
        assert version.tags.get(tag), tag
    assert version.tags["dagster_run_id"] == reg.lineage["dagster_run_id"]
    run = client.get_run(version.run_id)
    assert run.data.params["max_epochs"] == "2"
    model = mlflow.pyfunc.load_model(f"models:/{reg.model_name}@champion")
    series = next(s for s in pipeline_run["manifest"].series if s.kind == "axial")
    folder = Path(pipeline_run["root"]) / "inbox" / series.folder
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:  # the model takes content (a zipped DICOM series), never a path
        for path in sorted(folder.glob("*.dcm")):
            z.write(path, arcname=path.name)
    out = model.predict(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]}))
    (tmp_path / "pred.nii.gz").write_bytes(base64.b64decode(out["labels"][0]))
    pred = nib.load(tmp_path / "pred.nii.gz")
    assert pred.shape[:3] == (series.columns, series.rows, series.n_slices)
    assert np.allclose(pred.affine, np.asarray(series.affine_ras), atol=1e-3)
    assert sum(json.loads(out["voxels"][0]).values()) == int(np.prod(pred.shape))


def _files(folder: Path):
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def test_phi_audit_of_a_full_run(pipeline_run):
    """No planted PHI value in any file under outputs, Dagster and MLflow (SQLite databases included)."""
    root = Path(pipeline_run["root"])
    planted = [v for v in pipeline_run["manifest"].planted_phi if len(v) >= 4]
    assert len(planted) > 20
    targets = (
        _files(root / "outputs")
        + _files(root / "data" / "dataset")
        + _files(root / "dagster_home")
        + _files(root / "mlartifacts")
        + [root / "mlflow.db"]
    )
    assert len(targets) > 50
    hits = []
    for path in targets:
        data = path.read_bytes()
        if path.name.endswith(".gz"):
            try:
                data += gzip.decompress(data)
            except OSError:
                pass
        hits += [(path.relative_to(root).as_posix(), v[:3]) for v in planted if v.encode() in data]
        hits += [(path.relative_to(root).as_posix(), "name") for v in planted
                 if len(v) >= 6 and v.encode("utf-16-le") in data]
    assert not hits, hits[:10]
    for path in targets:  # no PHI in paths either
        assert not any(v in path.as_posix() for v in planted if len(v) >= 6)


def test_minimum_dice_gate_blocks_registration(pipeline_run):
    """A blocking check: with an unreachable minimum Dice the registration step does not run."""
    from pipelines.definitions import make_definitions
    from pipelines.resources import PipelineSettings

    params = pipeline_run["params"]
    instance = pipeline_run["instance"]
    settings = PipelineSettings(params_file=params["params_file"], output_dir=str(params["output_dir"]))
    before = instance.get_latest_materialization_event(AssetKey("registered_model"))
    job = make_definitions(settings).resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, raise_on_error=False, asset_selection=[AssetKey("evaluation"), AssetKey("registered_model")],
        run_config={"ops": {"evaluation_minimum_dice": {"config": {"min_dice": 1.01}}}})
    checks = [e for e in result.get_asset_check_evaluations() if e.check_name == "minimum_dice"]
    assert checks and not checks[0].passed
    materialised = {e.asset_key for e in result.get_asset_materialization_events()}
    assert AssetKey("registered_model") not in materialised
    after = instance.get_latest_materialization_event(AssetKey("registered_model"))
    assert after.run_id == before.run_id != result.run_id


def test_retraining_with_nothing_new_skips_and_says_why(pipeline_run):
    """What the weekly schedule runs: with the same dataset and parameters nothing is trained or registered."""
    from pipelines.definitions import make_definitions
    from pipelines.resources import PipelineSettings

    params, instance, reg = pipeline_run["params"], pipeline_run["instance"], pipeline_run["result"]
    settings = PipelineSettings(params_file=params["params_file"], output_dir=str(params["output_dir"]))
    result = make_definitions(settings).resolve_job_def("retrain").execute_in_process(instance=instance)
    assert result.success
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialised == {"training_dataset", "preprocessed_cache"}
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert f"skipped: nothing changed since version {reg.version}" in messages
