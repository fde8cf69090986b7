"""Hippocampus (MSD Task04): medcore's preset against nnU-Net v2 and a MONAI-tutorial baseline, same split, same budget.

    .venv/bin/python -m benchmarks.hippocampus [--minutes 30] [--quick] [--peers nnunet,monai] [--out DIR]
        [--device cpu|cuda] [--split-seed N] [--plan JSON] [--train JSON]   (tuning: another split, overrides)

Every racer trains on the same fixed hold-out split (80/20, seed 0: 166 training, 42 validation
cases) for the same wall-clock budget, one racer after the other. medcore trains its ``hippocampus``
preset (plan derived from the data, DynUNet with deep supervision, AdamW + poly, library augmentation,
its own validation inside the budget on 10% of the training cases, which chooses the checkpoint and
the post-processing: no racer sees the held-out cases before it is scored on them). nnU-Net v2
(``--peers nnunet``, ``make bench-tools``) runs its own plan_and_preprocess (timed apart), its default
3d_fullres trainer stopped by the wall clock, its final validation, post-processing and predictor
(``benchmarks/nnunet_race.py``). The MONAI baseline
follows MONAI's tutorials: MONAI transforms and CacheDataset, RandCropByPosNegLabeld, MONAI UNet with
residual units, DiceCELoss, Adam, at medcore's batch (2) and patch (40x56x40). All final models are
scored by the same code (Dice and HD95 in mm per class on the original label files): medcore through
its MODEL_DIR as ``medcore predict`` runs it (the plan's preprocessing, sliding window, flip averaging
and post-processing) and once more without flips; the baseline with the tutorial's sliding window and
once more with medcore's flip averaging.
Prints samples/s and the fraction of step time spent waiting for data, leaves medcore's MODEL_DIR and
prints its path. With ``--device cuda`` the racers train on the GPU with mixed precision (medcore's
preset plans for a GPU: bf16, more filters; the baseline under bf16 autocast; nnU-Net with its own
defaults), and the speed-up of the GPU over all of the machine's CPU cores is measured per training
step for medcore's and the baseline's network.
The last line is ``RESULT dice_mean=... nnunet_dice_mean=... monai_dice_mean=... dice_vs_nnunet=...``
(medcore's mean foreground Dice minus nnU-Net's) followed by per-class and speed keys.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from medcore.engine.presets import default_data_root, find_msd_cases, split_cases
from medcore.utils.atomic import atomic_write_text

PATCH = (40, 56, 40)
BATCH = 2
NAMES = {1: "anterior", 2: "posterior"}


def score(label_pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Mean per-class Dice and HD95 (1 mm spacing) over (prediction, reference) label maps."""
    from medcore.metrics import dice, hausdorff_distance, one_hot

    rows = []
    for pred, ref in label_pairs:
        p, r = one_hot(pred[None, None].long(), 3), one_hot(ref[None, None].long(), 3)
        rows.append(
            (dice(p, r)[0].numpy(), hausdorff_distance(p, r, spacing=[1.0, 1.0, 1.0], percentile=95)[0].numpy())
        )
    out = {}
    for c, name in NAMES.items():
        out[f"dice_{name}"] = float(np.nanmean([d[c] for d, _ in rows]))
        hd = [h[c] for _, h in rows if math.isfinite(h[c])]
        out[f"hd95_{name}"] = float(np.mean(hd)) if hd else float("nan")
    out["dice_mean"] = float(np.mean([out[f"dice_{n}"] for n in NAMES.values()]))
    out["hd95_mean"] = float(np.mean([out[f"hd95_{n}"] for n in NAMES.values()]))
    return out


def run_medcore(minutes: float, out: Path, train_cases: list[dict], val_cases: list[dict], max_val: int | None,
                threads: int, split_seed: int = 0, plan: dict | None = None, device: str = "cpu",
                train: dict | None = None) -> dict:
    import dataclasses

    import medcore.networks.dynunet  # noqa: F401  (registers "dynunet")
    from medcore.engine.run import run_training
    from medcore.inferers.model_dir import load_model_dir
    from medcore.inferers.predict import predict_volume
    from medcore.io import load_image

    # medcore sees the training cases only: its checkpoint choice and post-processing decision come from a
    # validation hold-out of 10% of them, never from the held-out cases it is scored on
    run_dir = out / "medcore_run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a benchmark starts fresh (an existing run would be resumed)
    run_dir.mkdir(parents=True)
    datalist = run_dir / "training_cases.json"
    atomic_write_text(datalist, json.dumps({"training": [{"image": str(Path(c["image"]).resolve()),
                                                          "label": str(Path(c["label"]).resolve())}
                                                         for c in train_cases]}, indent=1))
    config = {"preset": "hippocampus", "datalist": str(datalist), "split": {"fraction": 0.1, "seed": split_seed},
              "time_budget_minutes": minutes, "max_val_cases": max_val, "threads": threads, "device": device,
              "plan": plan or {}, "train": train or {}}
    started = time.perf_counter()
    summary = run_training(config, run_dir, progress=True)
    wall = time.perf_counter() - started
    history = json.loads((run_dir / "history.json").read_text())
    train_seconds = sum(r["epoch_seconds"] for r in history)
    # score what a user gets: `medcore predict` on the original files (the MODEL_DIR's own preprocessing,
    # inference and flip averaging), against the original labels; once more without the flips
    model, spec = load_model_dir(summary["model_dir"], device=device)
    plain = dataclasses.replace(spec, inference={**spec.inference, "tta": False})
    pairs, pairs_plain = [], []
    for case in val_cases:
        image, ref = load_image(case["image"]), load_image(case["label"]).data[0].float().round().long()
        pairs.append((predict_volume(model, spec, image).data[0], ref))
        pairs_plain.append((predict_volume(model, plain, image).data[0], ref))
    return {"metrics": score(pairs), "metrics_no_tta": score(pairs_plain), "tta": spec.inference["tta"],
            "model_dir": summary["model_dir"], "train_minutes": train_seconds / 60,
            "wall_minutes": wall / 60, "epochs": summary["epochs"], "steps": summary["global_step"],
            "samples_per_s": float(np.mean([r["samples_per_s"] for r in history])),
            "data_wait_fraction": float(np.mean([r["data_wait_fraction"] for r in history])),
            "best_epoch": summary["best_epoch"], "precision": summary["precision"],
            "postprocessing": summary.get("postprocessing", []),
            "plan": json.loads((run_dir / "plan.json").read_text())}


def monai_unet() -> torch.nn.Module:
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet

    return UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                num_res_units=2, norm=Norm.BATCH)


def autocast(device: str):
    """The baseline's mixed precision: bf16 autocast on a GPU (as MONAI's AMP tutorials), none on the CPU."""
    from medcore.engine.amp import choose_precision

    return choose_precision(device, "bf16" if device.startswith("cuda") else "fp32").autocast()


def run_monai(minutes: float, train_cases: list[dict], val_cases: list[dict], seed: int = 0,
              device: str = "cpu") -> dict:
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        NormalizeIntensityd,
        Orientationd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )
    from monai.utils import set_determinism

    set_determinism(seed)
    keys = ["image", "label"]
    base = [LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS", labels=None),
            NormalizeIntensityd("image"), SpatialPadd(keys, spatial_size=PATCH), EnsureTyped(keys)]
    train_tf = Compose(base + [
        RandCropByPosNegLabeld(keys, label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=1),
        RandFlipd(keys, prob=0.5, spatial_axis=0), RandFlipd(keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys, prob=0.5, spatial_axis=2), RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.1, prob=0.5)])
    files = [{"image": c["image"], "label": c["label"]} for c in train_cases]
    ds = CacheDataset(files, train_tf, cache_rate=1.0, num_workers=0, progress=False)
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)
    model = monai_unet().to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    budget, steps, wait, compute = minutes * 60, 0, 0.0, 0.0
    started = time.perf_counter()
    done = False
    while not done:
        model.train()
        tick = time.perf_counter()
        for batch in loader:
            got = time.perf_counter()
            wait += got - tick
            opt.zero_grad()
            with autocast(device):
                loss = loss_fn(model(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            opt.step()
            float(loss.detach())
            steps += 1
            tick = time.perf_counter()
            compute += tick - got
            if tick - started > budget:
                done = True
                break
    train_seconds = time.perf_counter() - started
    model.eval()
    val_tf = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS", labels=None),
                      NormalizeIntensityd("image"), EnsureTyped(keys)])
    from medcore.inferers.tta import flip_tta

    pairs, pairs_tta = [], []
    with torch.inference_mode():
        for c in val_cases:
            d = val_tf({"image": c["image"], "label": c["label"]})
            x, ref = d["image"][None].as_tensor().float().to(device), torch.as_tensor(d["label"][0]).round().long()

            def probs(batch: torch.Tensor) -> torch.Tensor:
                with autocast(device):
                    out = sliding_window_inference(batch, PATCH, 1, model, overlap=0.5, mode="gaussian")
                return torch.as_tensor(out).float().softmax(1)

            pairs.append((probs(x).argmax(1)[0].cpu(), ref))  # the tutorial's inference
            pairs_tta.append((flip_tta(x, probs).argmax(1)[0].cpu(), ref))  # with medcore's flip averaging
    return {"metrics": score(pairs), "metrics_tta": score(pairs_tta), "train_minutes": train_seconds / 60,
            "steps": steps,
            "samples_per_s": steps * BATCH / (wait + compute), "data_wait_fraction": wait / (wait + compute)}


def step_seconds(model: torch.nn.Module, loss_fn: torch.nn.Module, device: str, steps: int = 5) -> float:
    """Median seconds of a baseline training step (Adam, batch 2 at PATCH, random data) on ``device``."""
    from medcore.engine.run import time_training_steps

    model = model.to(device).train()
    x = torch.randn(BATCH, 1, *PATCH, device=device)
    y = torch.randint(0, 3, (BATCH, 1, *PATCH), device=device)
    return time_training_steps(model, loss_fn, torch.optim.Adam(model.parameters(), lr=1e-3), x, y,
                               lambda: autocast(device), steps)


def gpu_speedup(plan: dict, threads: int) -> dict[str, float]:
    """Per-step speed-up of one GPU (mixed precision) over all of this machine's CPU cores (fp32), for
    medcore's GPU plan network (as its trainer steps it) and for the baseline UNet."""
    from monai.losses import DiceCELoss

    from medcore.engine.run import calibrate_step_seconds
    from medcore.losses import build_loss
    from medcore.networks import build_network

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        med = {dev: calibrate_step_seconds(build_network(plan["network"]), build_loss(plan["loss"]), plan, dev,
                                           steps=5) for dev in ("cuda", "cpu")}
        mon = {
            dev: step_seconds(monai_unet(), DiceCELoss(to_onehot_y=True, softmax=True), dev) for dev in ("cuda", "cpu")
        }
    finally:
        torch.set_num_threads(threads)
    return {"cpu_cores": os.cpu_count() or 1, "medcore_step_s": med, "monai_step_s": mon,
            "medcore": med["cpu"] / med["cuda"], "monai": mon["cpu"] / mon["cuda"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training wall-clock budget per racer")
    p.add_argument("--quick", action="store_true", help="2-minute budget, 10 validation cases")
    p.add_argument("--peers", default="monai", help="comma-separated racers beside medcore: monai, nnunet "
                   "(nnU-Net v2 from its own environment, `make bench-tools`), or none")
    p.add_argument("--skip-monai", action="store_true", help="the same as leaving monai out of --peers")
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--out", default="outputs/bench_hippocampus")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="train both racers here (cuda: AMP)")
    p.add_argument("--split-seed", type=int, default=0, help="hold-out split seed (tune on another split than 0)")
    p.add_argument("--plan", type=json.loads, default=None, help="plan overrides as JSON, for tuning runs")
    p.add_argument("--train", type=json.loads, default=None,
                   help='trainer overrides as JSON, for tuning runs (e.g. \'{"compile": true}\')')
    args = p.parse_args()
    peers = {x.strip() for x in args.peers.split(",") if x.strip() and x.strip() != "none"}
    if args.skip_monai:
        peers.discard("monai")
    if peers - {"monai", "nnunet"}:
        p.error(f"--peers: unknown racer(s) {sorted(peers - {'monai', 'nnunet'})}; choose from monai, nnunet")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to PyTorch; run on a GPU machine or use --device cpu")
    minutes = 2.0 if args.quick else args.minutes
    max_val = 10 if args.quick else None
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cases = find_msd_cases(default_data_root() / "hippocampus")
    train_cases, val_cases = split_cases(cases, 0.2, seed=args.split_seed)
    val_cases = val_cases[:max_val] if max_val else val_cases
    print(f"hippocampus: {len(train_cases)} training / {len(val_cases)} validation cases, budget {minutes:g} min "
          f"per racer, {args.threads} threads, batch {BATCH}, patch {PATCH}, device {args.device}")
    med = run_medcore(minutes, out, train_cases, val_cases, max_val, args.threads, args.split_seed, args.plan,
                     args.device, args.train)
    print(f"medcore: {json.dumps(med['metrics'])}")
    print(f"medcore without flip averaging: {json.dumps(med['metrics_no_tta'])}")
    print(
        f"medcore: {med['steps']} steps in {med['train_minutes']:.1f} min, {med['samples_per_s']:.2f} samples/s, "
        f"data wait {100 * med['data_wait_fraction']:.1f}% of step time, {med['precision']}; "
        f"largest-component post-processing for {med['postprocessing'] or 'no class'}; MODEL_DIR {med['model_dir']}"
    )
    mon = None
    if "monai" in peers:
        mon = run_monai(minutes, train_cases, val_cases, device=args.device)
        print(f"monai:   {json.dumps(mon['metrics'])}")
        print(f"monai with flip averaging: {json.dumps(mon['metrics_tta'])}")
        print(f"monai:   {mon['steps']} steps in {mon['train_minutes']:.1f} min, {mon['samples_per_s']:.2f} samples/s, "
              f"data wait {100 * mon['data_wait_fraction']:.1f}% of step time")
        print(f"ratio: dice_mean medcore/monai = {med['metrics']['dice_mean'] / mon['metrics']['dice_mean']:.3f}; "
              f"samples/s medcore/monai = {med['samples_per_s'] / mon['samples_per_s']:.2f} (different networks)")
    nnu = None
    if "nnunet" in peers:
        from benchmarks.nnunet_race import run_nnunet, score_nnunet

        nnu = run_nnunet(minutes, train_cases, val_cases, out, device=args.device, threads=args.threads)
        nnu["metrics"] = score_nnunet(nnu, val_cases)
        nnu["predictions"] = {k: str(v) for k, v in nnu["predictions"].items()}
        print(f"nnunet:  {json.dumps(nnu['metrics'])}")
        print(f"nnunet:  {nnu['steps']} steps ({nnu['epochs']} epochs started) in {nnu['train_minutes']:.1f} min, "
              f"{nnu['samples_per_s']:.2f} samples/s, data wait {100 * nnu['data_wait_fraction']:.1f}% of step time; "
              f"plan_and_preprocess {nnu['plan_minutes']:.1f} min (not in the budget), own fold-0 validation "
              f"Dice {nnu['own_validation_dice']:.4f}")
    speedup = gpu_speedup(med["plan"], args.threads) if args.device == "cuda" and "monai" in peers else None
    if speedup:
        print(f"step time, GPU vs {speedup['cpu_cores']} CPU cores: medcore {json.dumps(speedup['medcore_step_s'])} "
              f"= {speedup['medcore']:.1f}x; monai {json.dumps(speedup['monai_step_s'])} = {speedup['monai']:.1f}x")
    atomic_write_text(out / "result.json", json.dumps({"medcore": med, "monai": mon, "nnunet": nnu, "minutes": minutes,
                                                       "threads": args.threads, "device": args.device,
                                                       "gpu_speedup": speedup}, indent=2) + "\n")
    m = med["metrics"]
    monai_dice = mon["metrics"]["dice_mean"] if mon else float("nan")
    monai_tta = mon["metrics_tta"]["dice_mean"] if mon else float("nan")
    nnunet_dice = nnu["metrics"]["dice_mean"] if nnu else float("nan")
    print(f"MODEL_DIR {med['model_dir']}")
    print(f"RESULT dice_mean={m['dice_mean']:.4f} nnunet_dice_mean={nnunet_dice:.4f} monai_dice_mean={monai_dice:.4f} "
          f"dice_vs_nnunet={m['dice_mean'] - nnunet_dice:.4f} dice_anterior={m['dice_anterior']:.4f} "
          f"dice_posterior={m['dice_posterior']:.4f} "
          f"train_minutes={med['train_minutes']:.1f} hd95_mean={m['hd95_mean']:.2f} "
          f"samples_per_s={med['samples_per_s']:.2f} data_wait={med['data_wait_fraction']:.3f} "
          f"dice_mean_no_tta={med['metrics_no_tta']['dice_mean']:.4f} monai_dice_mean_tta={monai_tta:.4f} "
          f"monai_samples_per_s={mon['samples_per_s'] if mon else float('nan'):.2f} device={args.device} "
          f"precision={med['precision']}" + (f" gpu_speedup={speedup['medcore']:.1f} monai_gpu_speedup="
                                             f"{speedup['monai']:.1f}" if speedup else ""))


if __name__ == "__main__":
    main()
