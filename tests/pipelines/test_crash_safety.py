"""Acceptance 7: SIGKILL the whole run during conversion and during training; a rerun completes and leaves
no partial files and no duplicated entries in the outputs, the DVC dataset or the MLflow registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[2]
RUN = ("import sys; from dagster import DagsterInstance; from pipelines.demo import run_pipeline; "
       "from pipelines.params import load_params; "
       "run_pipeline(load_params(sys.argv[1]), DagsterInstance.get())")


def _start(params_file: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(params_file)], cwd=PROJECT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _kill_when(proc: subprocess.Popen, condition, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)  # the whole run: Dagster process and torchrun workers
            proc.wait()
            return
        assert proc.poll() is None, "the run ended before the kill point was reached"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("kill point not reached in time")


def test_sigkill_during_conversion_and_training_then_rerun(tmp_path, deid_key, new_project):
    from medcore.data.synthetic import write_synthetic_studies

    root = tmp_path / "project"
    params_file = new_project(root, train={"max_epochs": 3, "samples_per_epoch": 16})
    write_synthetic_studies(root / "inbox", n_patients=3, seed=2, shape=(40, 40, 20))
    home = root / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home.resolve()), "MEDCORE_DEID_KEY": deid_key, "OMP_NUM_THREADS": "1"}
    out = root / "outputs" / "pipeline"

    def converting() -> bool:
        d = out / "converted"
        return d.is_dir() and any(p.name.startswith(".tmp-") for p in d.iterdir())

    _kill_when(_start(params_file, env), converting)

    def training() -> bool:
        return any(out.glob("train/*/checkpoints/*.safetensors")) and not any(out.glob("train/*/summary.json"))

    _kill_when(_start(params_file, env), training)
    assert not (out / "registered_model.json").exists()
    final = _start(params_file, env)
    assert final.wait(timeout=300) == 0

    leftovers = [p for p in [*out.rglob("*"), *(root / "data").glob("*")] if ".tmp" in p.name]
    assert not leftovers, leftovers[:5]
    runs = [p for p in (out / "train").iterdir() if p.is_dir()]
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file()  # resumed, not started twice
    import pandas as pd

    for study in (out / "converted").iterdir():
        index = pd.read_parquet(study / "series_index.parquet")
        assert index["series_id"].is_unique
        assert len(list(study.rglob("*.nii.gz"))) == len(index)
    dvc = yaml.safe_load((root / "data" / "dataset.dvc").read_text())
    assert len(dvc["outs"]) == 1
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri, uri)
    versions = client.search_model_versions("name = 'medcore-segmentation'")
    assert len(versions) == 1
    exp = client.get_experiment_by_name("medcore-training")
    assert len(client.search_runs([exp.experiment_id])) == 1

    # the two killed runs were reported FAILED by the reruns' recovery (pipelines/recovery.py); none left STARTED
    from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
    from dagster._core.instance.ref import InstanceRef

    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home.resolve()))) as instance:
        unfinished = [DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
        assert not instance.get_run_records(filters=RunsFilter(statuses=unfinished))
        failed = instance.get_run_records(filters=RunsFilter(statuses=[DagsterRunStatus.FAILURE]))
        assert len(failed) == 2
        for record in failed:
            [event] = instance.all_logs(record.dagster_run.run_id, of_type=DagsterEventType.RUN_FAILURE)
            assert "SIGKILL" in event.dagster_event.message
