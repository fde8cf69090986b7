"""One shared end-to-end run of the whole graph (session scope) for the pipeline tests.

A temporary project: a git + DVC repository with a local remote, synthetic studies in its inbox,
a SQLite Dagster instance (absolute DAGSTER_HOME), a SQLite MLflow backend and artifact root.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
DVC = os.environ.get("MEDCORE_DVC", str(PROJECT / ".venv-dvc" / "bin" / "dvc"))
KEY = "5e" * 32


def make_project(root: Path, **overrides) -> Path:
    """A temporary project folder with params.yaml and a git repository; returns the params path."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())  # every key, as DVC needs them
    test_values = {
        "source": {"dicom_dir": "inbox/dicom", "label_manifest": "inbox/labels/labels.json", "settle_seconds": 0},
        "synthetic": {"n_patients": 3, "seed": 0, "shape": [40, 40, 20]},
        "output_dir": "outputs/pipeline",
        "train": {"nproc": 2, "max_epochs": 2, "samples_per_epoch": 8, "checkpoint_every_steps": 2, "threads": 1},
        "plan": {"patch_size": [32, 32, 16], "base_filters": 4},  # small and fast; the rest is planned
        "evaluate": {"min_dice": 0.0},  # two tiny epochs learn nothing; the gate itself is tested apart
        "register": {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "artifact_root": "mlartifacts"},
        "dvc": {"remote": str(root / "dvc-remote")},
    }
    for values in (test_values, overrides):
        for k, v in values.items():
            params[k] = {**params[k], **v} if isinstance(v, dict) and isinstance(params.get(k), dict) else v
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root / "params.yaml"


@pytest.fixture(scope="session")
def new_project():
    """``make_project(root, **overrides) -> params path`` for tests that need their own project."""
    return make_project


@pytest.fixture(scope="session")
def deid_key():
    old = os.environ.get("MEDCORE_DEID_KEY")
    os.environ["MEDCORE_DEID_KEY"] = KEY
    os.environ.setdefault("MEDCORE_DVC", DVC)
    yield KEY
    if old is None:
        os.environ.pop("MEDCORE_DEID_KEY", None)
    else:
        os.environ["MEDCORE_DEID_KEY"] = old


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, deid_key):
    """The whole graph materialised once: returns a dict of paths, params, the manifest and the result."""
    from dagster import DagsterInstance

    from medcore.data.synthetic import write_synthetic_studies
    from pipelines.demo import run_pipeline
    from pipelines.params import load_params

    if not Path(os.environ["MEDCORE_DVC"]).exists():
        pytest.skip("DVC tool venv missing (make dvc-tool)") if os.environ.get("CI") != "true" else None
    root = tmp_path_factory.mktemp("project")
    params_file = make_project(root)
    params = load_params(params_file)
    manifest = write_synthetic_studies(root / "inbox", n_patients=3, seed=0, shape=(40, 40, 20))
    home = (root / "dagster_home").resolve()
    home.mkdir()
    # runs launched from the UI start at once (no daemon in tests); storage: SQLite under this home
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nrun_coordinator:\n"
                                       "  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n")
    old_home = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    instance = DagsterInstance.get()
    try:
        result = run_pipeline(params, instance)
        yield {"root": root, "params": params, "params_file": params_file, "manifest": manifest,
               "instance": instance, "home": home, "result": result}
    finally:
        instance.dispose()
        if old_home is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old_home
