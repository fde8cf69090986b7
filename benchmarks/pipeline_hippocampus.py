"""The workflow on real data: all 208 shared hippocampus cases as DICOM MR studies with a DICOM SEG each,
through ``python -m pipelines run`` (Dagster in-process, DVC-tracked dataset, MLflow registry).

    .venv/bin/python -m benchmarks.pipeline_hippocampus [--cases 208] [--minutes 20] [--nproc 2] [--out DIR]

The plan (modality MR from the headers, per-case z-score, patch and network from the data, class names from
the SEGs) is the pipeline's own; the score is the pipeline's ``evaluation`` on its own test patients (a
keyed-hash split of the patient pseudonyms, never seen in training). ``--cases`` and ``--minutes`` make a
quick smoke run. The last line is ``RESULT dice_mean=... test_cases=... train_minutes=... total_minutes=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from medcore.engine.presets import default_data_root
from tests.pipelines.hippocampus_dicom import write_hippocampus_inbox

PROJECT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=208)
    parser.add_argument("--minutes", type=float, default=20.0, help="train.time_budget_minutes")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes")
    parser.add_argument("--out", default="outputs/bench-pipeline-hippocampus", help="a fresh project folder")
    args = parser.parse_args(argv)
    data = default_data_root() / "hippocampus"
    cases = sorted(p.name.split(".nii")[0] for p in (data / "imagesTr").glob("*.nii.gz"))[:args.cases]
    root = Path(args.out).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params.update({"source": {**params["source"], "dicom_dir": "inbox/dicom", "label_manifest": "inbox/none.json"},
                   "plan": {}, "evaluate": {"min_dice": 0.0},
                   "register": {**params["register"], "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
                   "dvc": {"remote": str(root / "dvc-remote")}})
    params["train"] = {**params["train"], "nproc": args.nproc, "time_budget_minutes": args.minutes,
                       "max_epochs": None, "samples_per_epoch": None}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    t0 = time.perf_counter()
    write_hippocampus_inbox(data, root / "inbox" / "dicom", cases)
    print(f"wrote {len(cases)} DICOM studies with SEG in {time.perf_counter() - t0:.0f} s", flush=True)
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster_home"), "PYTHONPATH": str(PROJECT),
           "MEDCORE_DEID_KEY": os.environ.get("MEDCORE_DEID_KEY", "b3" * 32)}
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipelines", "run", "--params", str(root / "params.yaml")], cwd=root,
                   env=env, check=True)
    total = (time.perf_counter() - t1) / 60
    out = root / "outputs" / "pipeline"
    summary = json.loads((out / "evaluation" / "summary.json").read_text())
    latest = json.loads((out / "train" / "latest.json").read_text())
    train_s = json.loads((out / latest["run_dir"] / "summary.json").read_text()).get("wall_seconds", float("nan"))
    per_class = " ".join(f"dice_{k}={v:.4f}" for k, v in summary["class_dice"].items())
    print(f"RESULT dice_mean={summary['mean_dice']:.4f} {per_class} test_cases={summary['cases']} "
          f"train_minutes={train_s / 60:.1f} total_minutes={total:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
