"""nnU-Net v2 as a racer on the hippocampus split: its own planning, trainer, inference and post-processing.

nnU-Net lives in its own environment, ``.venv-nnunet`` (``make bench-tools``): its ``timm`` dependency
needs torchvision, whose compiled ops do not load beside the CPU torch of the project's environment,
and MONAI would then fail to import there. Every nnU-Net step runs as nnU-Net's own command in that
environment; this module only lays out the data, times the steps and scores the result.

The steps, each nnU-Net's default:
1. ``nnUNetv2_plan_and_preprocess`` on the training cases (timed apart from the budget);
2. the default ``3d_fullres`` trainer on fold 0 of nnU-Net's own 5-fold split of those cases, stopped
   by the wall clock (``benchmarks/nnunet_wallclock.py``, the one change), then nnU-Net's final
   validation of that fold;
3. ``nnUNetv2_find_best_configuration`` decides post-processing from that validation;
4. nnU-Net's predictor on the held-out cases, then ``nnUNetv2_apply_postprocessing``.
The caller scores the predictions with the same code as every other racer, on the original labels.

    .venv/bin/python -m benchmarks.nnunet_race --minutes 2 [--quick]   (a smoke run of nnU-Net alone)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASET_ID = 504
DATASET = f"Dataset{DATASET_ID:03d}_Hippocampus"
TRAINER = "nnUNetTrainerWallClock"
LABELS = {"background": 0, "anterior": 1, "posterior": 2}


def nnunet_env_dir() -> Path:
    """nnU-Net's environment: ``$MEDCORE_NNUNET_VENV`` or ``.venv-nnunet`` in the project root."""
    venv = Path(os.environ.get("MEDCORE_NNUNET_VENV", ROOT / ".venv-nnunet"))
    if not (venv / "bin" / "nnUNetv2_train").is_file():
        raise FileNotFoundError(f"nnU-Net is not installed in {venv}; run `make bench-tools` first "
                                "(or set MEDCORE_NNUNET_VENV to an environment with nnunetv2)")
    return venv


def write_raw_dataset(train_cases: list[dict], test_cases: list[dict], raw: Path) -> Path:
    """nnU-Net's raw layout (``imagesTr/X_0000.nii.gz``, ``labelsTr/X.nii.gz``, ``imagesTs``), as links."""
    folder = raw / DATASET
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True)
    for case in train_cases:
        (folder / "imagesTr" / f"{case['id']}_0000.nii.gz").symlink_to(Path(case["image"]).resolve())
        (folder / "labelsTr" / f"{case['id']}.nii.gz").symlink_to(Path(case["label"]).resolve())
    for case in test_cases:
        (folder / "imagesTs" / f"{case['id']}_0000.nii.gz").symlink_to(Path(case["image"]).resolve())
    meta = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": len(train_cases),
            "file_ending": ".nii.gz", "name": "Hippocampus (medcore race split)"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    return folder


def _run(venv: Path, env: dict, *command: str, log: Path) -> float:
    """One nnU-Net command in its environment; its output goes to ``log``. Returns the wall seconds."""
    exe = venv / "bin" / command[0]
    started = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ {' '.join(command)}\n")
        fh.flush()
        proc = subprocess.run([str(exe), *command[1:]], env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"nnU-Net step {command[0]} failed (exit {proc.returncode}); see {log}:\n{tail}")
    return time.perf_counter() - started


def run_nnunet(minutes: float, train_cases: list[dict], test_cases: list[dict], out: Path,
               device: str = "cpu", threads: int | None = None) -> dict:
    """Plan, train for ``minutes``, validate, decide post-processing and predict ``test_cases``.

    Returns the predicted label files by case id with the timings and training statistics.
    """
    venv = nnunet_env_dir()
    work = out / "nnunet"
    shutil.rmtree(work, ignore_errors=True)
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    for p in (raw, pre, res):
        p.mkdir(parents=True)
    folder = write_raw_dataset(train_cases, test_cases, raw)
    threads = threads or os.cpu_count() or 1
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res),
           "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", "2"), "MEDCORE_NNUNET_THREADS": str(threads),
           "MEDCORE_NNUNET_BUDGET_S": str(minutes * 60.0), "OMP_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)
    log = work / "nnunet.log"
    did = str(DATASET_ID)
    plan_s = _run(venv, env, "nnUNetv2_plan_and_preprocess", "-d", did, "-c", "3d_fullres",
                  "--verify_dataset_integrity", "-np", str(threads), log=log)
    driver = str(ROOT / "benchmarks" / "nnunet_wallclock.py")
    train_s = _run(venv, env, "python", driver, "train", did, "3d_fullres", "0", "--device", device, log=log)
    _run(venv, env, "nnUNetv2_find_best_configuration", did, "-c", "3d_fullres", "-tr", TRAINER, "-f", "0",
         "--disable_ensembling", log=log)
    model = res / DATASET / f"{TRAINER}__nnUNetPlans__3d_fullres"
    raw_pred, final = work / "pred_raw", work / "pred"
    predict_s = _run(venv, env, "python", driver, "predict", str(model), "0", str(folder / "imagesTs"),
                     str(raw_pred), "--device", device, log=log)
    pp = sorted(res.rglob("postprocessing.pkl"))
    if not pp:
        raise RuntimeError(f"nnU-Net wrote no postprocessing.pkl under {res}; see {log}")
    predict_s += _run(venv, env, "nnUNetv2_apply_postprocessing", "-i", str(raw_pred), "-o", str(final),
                      "-pp_pkl_file", str(pp[0]), "-plans_json", str(model / "plans.json"),
                      "-dataset_json", str(model / "dataset.json"), log=log)
    stats = json.loads((model / "fold_0" / "race_stats.json").read_text())
    busy = max(stats["step_seconds"] + stats["data_wait_seconds"], 1e-9)
    summary = json.loads((model / "fold_0" / "validation" / "summary.json").read_text())
    return {"predictions": {c["id"]: final / f"{c['id']}.nii.gz" for c in test_cases},
            "plan_minutes": plan_s / 60, "train_wall_minutes": train_s / 60, "predict_minutes": predict_s / 60,
            "train_minutes": stats["train_seconds"] / 60, "steps": stats["steps"], "epochs": stats["epochs"],
            "samples_per_s": stats["steps"] * stats["batch_size"] / busy,
            "data_wait_fraction": stats["data_wait_seconds"] / busy,
            "own_validation_dice": summary["foreground_mean"]["Dice"], "log": str(log)}


def score_nnunet(result: dict, test_cases: list[dict]) -> dict[str, float]:
    """nnU-Net's predictions scored by the race's shared code on the original label files."""
    from benchmarks.hippocampus import score
    from medcore.io import load_image

    pairs = []
    for case in test_cases:
        pred = load_image(result["predictions"][case["id"]]).data[0].round().long()
        ref = load_image(case["label"]).data[0].float().round().long()
        if pred.shape != ref.shape:
            raise ValueError(f"{case['id']}: nnU-Net's prediction has shape {tuple(pred.shape)}, "
                             f"the label {tuple(ref.shape)}")
        pairs.append((pred, ref))
    return score(pairs)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from medcore.engine.presets import default_data_root, find_msd_cases, split_cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true", help="24 training and 6 test cases: checks the plumbing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "_work" / "nnunet_race")
    args = parser.parse_args(argv)
    cases = find_msd_cases(Path(default_data_root()) / "hippocampus")
    train, test = split_cases(cases, 0.2, 0)
    if args.quick:
        train, test = train[:24], test[:6]
    result = run_nnunet(args.minutes, train, test, args.out, device=args.device)
    metrics = score_nnunet(result, test)
    print(json.dumps({k: v for k, v in result.items() if k != "predictions"}, indent=1))
    print(json.dumps(metrics, indent=1))
    print(f"RESULT nnunet_dice_mean={metrics['dice_mean']:.4f} steps={result['steps']} "
          f"train_minutes={result['train_minutes']:.2f}", file=sys.stdout)


if __name__ == "__main__":
    main()
