"""`dvc repro` runs ingest..register end to end; a second `dvc repro` does nothing; a change to the medcore code
a stage executes (medcore/dicom/convert.py) makes that stage and every stage below it out of date."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]
STAGES = ("ingest", "convert", "dataset", "cache", "train", "evaluate", "register")


def _dvc(args, cwd, env):
    proc = subprocess.run([env["MEDCORE_DVC"], *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def test_dvc_repro_end_to_end_then_noop(tmp_path, deid_key, new_project):
    from medcore.data.synthetic import write_synthetic_studies

    env = {**os.environ, "MEDCORE_DEID_KEY": deid_key, "OMP_NUM_THREADS": "1"}
    if not Path(env.get("MEDCORE_DVC", "")).exists():
        pytest.skip("DVC tool venv missing (make dvc-tool)")
    root = tmp_path / "repo"
    new_project(root, source={"dicom_dir": "data/inbox/dicom", "label_manifest": "data/inbox/labels/labels.json"},
                synthetic={"n_patients": 2, "seed": 1, "shape": [32, 32, 16]})
    (root / "pipelines").symlink_to(PROJECT / "pipelines")
    # a copy, so the test can change it (the stages still run the project's medcore, through PYTHONPATH)
    shutil.copytree(PROJECT / "medcore", root / "medcore", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".venv").symlink_to(PROJECT / ".venv")
    shutil.copyfile(PROJECT / "dvc.yaml", root / "dvc.yaml")
    (root / ".gitignore").write_text(".venv\nmlflow.db\nmlartifacts/\n")
    write_synthetic_studies(root / "data" / "inbox", n_patients=2, seed=1, shape=(32, 32, 16))
    _dvc(["init", "--quiet"], root, env)
    (root / ".dvcignore").write_text(".venv\n__pycache__\nmlartifacts\n")
    env["PYTHONPATH"] = str(PROJECT)
    first = _dvc(["repro"], root, env)
    for stage in STAGES:
        assert f"Running stage '{stage}'" in first, stage
    reg = json.loads((root / "outputs" / "repro" / "registered_model.json").read_text())
    assert reg["alias"] == "champion" and reg["lineage"]["runner"] == "dvc"
    second = _dvc(["repro"], root, env)
    assert "Running stage" not in second
    status = _dvc(["status"], root, env)
    assert "up to date" in status
    metrics = _dvc(["metrics", "show", "--json"], root, env)
    assert "mean_dice" in metrics
    with open(root / "medcore" / "dicom" / "convert.py", "a") as fh:
        fh.write("\n# a change to the converter\n")
    status = _dvc(["status"], root, env)
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line.endswith(":") and
               not line.startswith((" ", "\t"))}
    assert changed == set(STAGES), status  # ingest runs medcore/dicom too; convert and all below it
    assert "modified:" in status and "medcore/dicom" in status, status


def _code(deps: list[str]) -> set[str]:
    return {d for d in deps if d.startswith(("medcore/", "pipelines/"))}


def test_each_stage_depends_on_the_code_above_it():
    """A stage's inputs were made by the code of the stages above it, so it lists that code too; and it
    lists its own step module."""
    import yaml

    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert tuple(stages) == STAGES
    for above, stage in zip(STAGES, STAGES[1:]):
        missing = _code(stages[above]["deps"]) - _code(stages[stage]["deps"])
        covered = {m for m in missing if any(m.startswith(d + "/") for d in _code(stages[stage]["deps"]))}
        assert missing == covered, f"dvc.yaml stage {stage} lacks {sorted(missing - covered)} (code of {above})"
        assert f"pipelines/steps/{stage}.py" in stages[stage]["deps"], stage
