"""Issue 12 acceptance: the workflow on real data. Shared hippocampus cases written as DICOM MR series with a
highdicom SEG each and planted PHI, no label manifest, through ``python -m pipelines run``: the plan comes
from the data, patients split into train and test by a keyed hash, and the champion scores well above
chance on its test patients."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import yaml

from tests.pipelines.hippocampus_dicom import write_hippocampus_inbox

PROJECT = Path(__file__).resolve().parents[2]
CASES = 12  # small and short so CI stays within its time; benchmarks/pipeline_hippocampus.py runs all 208


def test_hippocampus_dicom_with_seg_through_run(tmp_path, deid_key, new_project, shared_data):
    import mlflow

    cases = sorted(p.name.split(".nii")[0] for p in (shared_data / "hippocampus" / "imagesTr").glob("*.nii.gz"))
    root = tmp_path / "project"
    params_file = new_project(root, source={"dicom_dir": "inbox/dicom", "label_manifest": "inbox/no-manifest.json"},
                              dataset={"test_fraction": 0.3}, evaluate={"min_dice": 0.0})
    params = yaml.safe_load(params_file.read_text())
    params["plan"] = {}  # everything planned from the data
    params["train"] = {**params["train"], "nproc": 1, "time_budget_minutes": 1.5, "max_epochs": None,
                       "samples_per_epoch": None, "checkpoint_every_steps": None}
    params_file.write_text(yaml.safe_dump(params))
    planted = write_hippocampus_inbox(shared_data / "hippocampus", root / "inbox" / "dicom", cases[:CASES])
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster_home"), "PYTHONPATH": str(PROJECT),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipelines", "run", "--params", str(params_file)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Registered model: medcore-segmentation version 1 (champion: no champion yet)" in proc.stdout

    out = root / "outputs" / "pipeline"
    latest = json.loads((out / "train" / "latest.json").read_text())
    plan = json.loads((out / latest["run_dir"] / "plan.json").read_text())
    assert plan["modality"] == "MR" and plan["normalization"] == {"kind": "zscore"}  # from the DICOM headers
    assert plan["labels"] == {"background": 0, "anterior": 1, "posterior": 2}  # from the SEG's segment labels
    assert plan["preset"] == "datalist" and any("per-case z-score" in r for r in plan["reasons"])

    dataset = root / "data" / "dataset"
    split = json.loads((dataset / "split.json").read_text())["patients"]
    assert len(split) == CASES and {"train", "test"} == set(split.values())
    subjects = {p["series_id"]: p["subject"] for f in (out / "labels").glob("*/labels.json")
                for p in json.loads(f.read_text())["pairs"]}
    data = json.loads((dataset / "dataset.json").read_text())

    def patients(section: str) -> set[str]:
        return {subjects[Path(e["image"]).name.split(".nii")[0]] for e in data[section]}

    assert patients("training") and patients("test") and not patients("training") & patients("test")
    assert patients("test") == {p for p, side in split.items() if side == "test"}

    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    assert summary["cases"] == len(data["test"])
    assert summary["mean_dice"] > 0.5, summary  # chance is near 0: the structures fill ~5% of the crop
    reg = json.loads((out / "registered_model.json").read_text())
    mlflow.set_tracking_uri(reg["tracking_uri"])
    mlflow.set_registry_uri(reg["tracking_uri"])  # an earlier test in this process may have set another
    model = mlflow.pyfunc.load_model(f"models:/{reg['model_name']}@champion")
    folder = next((root / "inbox" / "dicom").iterdir()) / "mr"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:  # the served model takes content (a zipped DICOM series)
        for path in sorted(folder.glob("*.dcm")):
            z.write(path, arcname=path.name)
    pred = model.predict(pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode("ascii")]}))
    assert {int(k) for k in json.loads(pred["voxels"][0])} == {0, 1, 2}

    hits = []
    for path in [p for d in ("outputs", "data", "dagster_home", "mlartifacts") for p in (root / d).rglob("*")
                 if p.is_file()] + [root / "mlflow.db"]:
        blob = path.read_bytes()
        if path.name.endswith(".gz"):
            blob += gzip.decompress(blob)
        hits += [(path.name, v[:3]) for v in planted if v.encode() in blob or v in path.as_posix()]
    assert not hits, hits[:10]
