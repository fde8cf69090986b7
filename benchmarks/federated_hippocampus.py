"""Federated hippocampus: 3 unequal sites with different intensity scaling, federated vs centralised vs each site alone.

    .venv/bin/python -m benchmarks.federated_hippocampus [--minutes 10] [--rounds 5] [--quick] [--out DIR]

The training cases of the fixed hold-out split (80/20, seed 0: 166 training, 42 test cases, as
``benchmarks/hippocampus.py``) are dealt into 3 sites of unequal size (50%, 30%, 20%), and each site's
images are multiplied by its own factor (1.0, 3.0, 0.25): scanners that scale intensities differently.
Each site is an MSD-layout dataset folder (``dataset.json``, ``imagesTr``, ``labelsTr``). Every
contender gets the same wall-clock budget (``--minutes``) on this machine:

- federated: ``pipelines.federated`` with a SuperLink and 3 SuperNodes (real processes), FedAvg, the
  local steps per round chosen from a timing of one training step so that the rounds fit the budget;
- centralised: ``medcore train`` on the union of the sites' cases (``time_budget_minutes``), both cores;
- each site alone, in two ways (``--alone``):
  - ``shared``: the 3 sites train alone at once, one thread each, sharing the machine for the same
    minutes as the federation's sites share it. Each site keeps the compute it has in the federation
    and gives up only the others' data: the question a hospital asks before it joins. The three
    together spend the same total wall-clock budget as the federation. This is ``best_site_dice``.
  - ``full``: each site alone with the whole machine (both cores) for the whole budget, one after the
    other: three budgets in all, three times the federation's compute per site
    (``best_site_full_dice``).

All models are scored by the same code on the same 42 test cases (the originals, unscaled: a fourth
scanner), through their MODEL_DIRs as ``medcore predict`` runs them. Preprocessing is outside every
budget (the engine's budget counts training; the sites' caches are filled before the federation's clock
starts), but the federation's clock includes starting its processes and every round's exchange, so
``fed_minutes`` reports the wall time it really took. The last line is
``RESULT fed_dice=... central_dice=... best_site_dice=... rounds=...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from benchmarks.hippocampus import score
from medcore.engine.presets import default_data_root, find_msd_cases, split_cases
from medcore.utils.atomic import atomic_write_text

SHARES = (0.5, 0.3, 0.2)
SCALES = (1.0, 3.0, 0.25)
LABELS = {"0": "background", "1": "anterior", "2": "posterior"}


def write_site(folder: Path, cases: list[dict], scale: float) -> Path:
    """An MSD-layout site: images multiplied by ``scale``, labels copied, ``dataset.json``."""
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for case in cases:
        name = Path(case["image"]).name
        img = nib.load(case["image"])
        data = np.asarray(img.dataobj, dtype=np.float32) * scale
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(folder / "imagesTr" / name))
        shutil.copyfile(case["label"], folder / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    atomic_write_text(folder / "dataset.json", json.dumps({"name": folder.name, "modality": {"0": "MRI"},
                                                           "labels": LABELS, "training": training}, indent=1))
    return folder


def make_sites(out: Path, train_cases: list[dict], max_cases: int | None) -> list[Path]:
    order = np.random.default_rng(0).permutation(len(train_cases))
    cuts = np.cumsum([0] + [round(s * len(train_cases)) for s in SHARES[:-1]] + [len(train_cases)])
    cuts[-1] = len(train_cases)
    sites = []
    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        cases = [train_cases[j] for j in order[a:b]]
        sites.append(write_site(out / "sites" / f"site-{i + 1}", cases[:max_cases] if max_cases else cases, SCALES[i]))
    return sites


def test_score(model_dir: str | Path, test_cases: list[dict]) -> dict[str, float]:
    from medcore.inferers.model_dir import load_model_dir
    from medcore.inferers.predict import predict_volume
    from medcore.io import load_image

    model, spec = load_model_dir(model_dir)
    pairs = [(predict_volume(model, spec, load_image(c["image"])).data[0],
              load_image(c["label"]).data[0].float().round().long()) for c in test_cases]
    return score(pairs)


def train_alone(datalist: Path, run_dir: Path, minutes: float, threads: int) -> Path:
    from medcore.engine.run import run_training

    shutil.rmtree(run_dir, ignore_errors=True)
    config = {"preset": "hippocampus", "datalist": str(datalist), "split": {"fraction": 0.1, "seed": 0},
              "time_budget_minutes": minutes, "threads": threads, "device": "cpu"}
    return Path(run_training(config, run_dir, progress=False)["model_dir"])


def train_sites_at_once(sites: list[Path], out: Path, minutes: float) -> dict[str, Path]:
    """Every site alone at the same time, one thread each (as the federation's sites train): their MODEL_DIRs."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(len(sites), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {s.name: pool.submit(train_alone, s / "dataset.json", out / s.name, minutes, 1) for s in sites}
        return {name: f.result() for name, f in futures.items()}


def best(scores: dict[str, dict[str, float]]) -> str:
    return max(scores, key=lambda k: scores[k]["dice_mean"])


def union_dataset(out: Path, sites: list[Path]) -> Path:
    training = []
    for site in sites:
        for item in json.loads((site / "dataset.json").read_text())["training"]:
            training.append({k: str((site / v).resolve()) for k, v in item.items()})
    path = out / "central" / "dataset.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"name": "central", "modality": {"0": "MRI"}, "labels": LABELS,
                                        "training": training}, indent=1))
    return path


def local_steps_for(sites: list[Path], minutes: float, rounds: int, round_overhead_s: float,
                    run_overhead_s: float) -> int:
    """Local steps per round so that the federation fits ``minutes``: its start and final evaluation
    (``run_overhead_s``), and ``rounds`` rounds of exchange (``round_overhead_s`` each) and training, the sites
    at once sharing the cores.

    Also fills each site's preprocessing cache with the federation's plan (before the clock starts, as the
    engine's own budget excludes preprocessing for the other contenders)."""
    import medcore.networks.dynunet  # noqa: F401
    from medcore.engine.run import calibrate_step_seconds
    from medcore.losses import build_loss
    from medcore.networks import build_network
    from pipelines.federated.plan import federated_plan
    from pipelines.federated.site import cached_training, prepare_site, site_fingerprint

    prepared = [prepare_site(s) for s in sites]
    plan = federated_plan({s.name: site_fingerprint(s) for s in prepared}).plan
    for site in prepared:
        cached_training(site, plan)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # each site's ClientApp trains on one thread (OMP_NUM_THREADS=1)
    try:
        step_s = calibrate_step_seconds(build_network(plan["network"]), build_loss(plan["loss"]), plan, "cpu")
    finally:
        torch.set_num_threads(threads)
    slowdown = max(1.0, len(sites) / (os.cpu_count() or 1))  # the sites train at once and share the cores
    per_round = (minutes * 60.0 - run_overhead_s) / rounds - round_overhead_s
    return max(1, int(per_round / (step_s * slowdown)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of each contender")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--round-overhead", type=float, default=13.0,
                   help="seconds per round not spent training: a ClientApp process started per message, the "
                        "SuperNodes' polling, transfer (5 rounds of 354 steps, planned as 90 s of training each, "
                        "took 103-104 s at 4891dec)")
    p.add_argument("--run-overhead", type=float, default=40.0,
                   help="seconds of the federation not in its rounds: starting the processes, the fingerprints "
                        "and the final evaluation at the sites (40 s at 4891dec)")
    p.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    p.add_argument("--federated-only", action="store_true",
                   help="only the federation (to compare its settings; the other contenders are left out)")
    p.add_argument("--alone", choices=("shared", "full", "both"), default="both",
                   help="each site alone: at once sharing the machine as in the federation, with the whole "
                        "machine each, or both")
    p.add_argument("--quick", action="store_true", help="smoke test: 6 cases per site, 4 test cases, 2 rounds")
    p.add_argument("--minutes-quick", type=float, default=0.5)
    p.add_argument("--out", default="outputs/bench_federated_hippocampus")
    args = p.parse_args()
    minutes, rounds = (args.minutes_quick, 2) if args.quick else (args.minutes, args.rounds)
    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cases = find_msd_cases(default_data_root() / "hippocampus")
    train_cases, test_cases = split_cases(cases, 0.2, seed=0)
    if args.quick:
        test_cases = test_cases[:4]
    sites = make_sites(out, train_cases, 6 if args.quick else None)
    print(f"hippocampus: {len(train_cases)} training cases in sites "
          f"{ {s.name: len(json.loads((s / 'dataset.json').read_text())['training']) for s in sites} } "
          f"(scales {SCALES}), {len(test_cases)} test cases, {minutes:g} min per contender")

    from pipelines.federated.federate import FederationSettings, global_model_dir, run_federation

    steps = local_steps_for(sites, minutes, rounds, args.round_overhead, args.run_overhead)
    started = time.perf_counter()
    run_federation(sites, out / "server", FederationSettings(rounds=rounds, local_steps=steps,
                                                             round_timeout=max(120.0, 6 * minutes * 60)))
    fed_minutes = (time.perf_counter() - started) / 60
    fed = test_score(global_model_dir(out / "server"), test_cases)
    print(f"federated: {rounds} rounds x {steps} local steps in {fed_minutes:.1f} min: {json.dumps(fed)}")

    run = f"rounds={rounds} local_steps={steps} fed_minutes={fed_minutes:.1f} minutes={minutes:g}"
    if args.federated_only:
        print(f"RESULT fed_dice={fed['dice_mean']:.4f} {run}")
        return
    started = time.perf_counter()
    central = test_score(train_alone(union_dataset(out, sites), out / "central" / "run", minutes, args.threads),
                         test_cases)
    print(f"centralised in {(time.perf_counter() - started) / 60:.1f} min: {json.dumps(central)}")
    shared: dict[str, dict[str, float]] = {}
    if args.alone in ("shared", "both"):
        for name, model_dir in train_sites_at_once(sites, out / "alone-shared", minutes).items():
            shared[name] = test_score(model_dir, test_cases)
            print(f"{name} alone, the 3 sites at once sharing the machine: {json.dumps(shared[name])}")
    full: dict[str, dict[str, float]] = {}
    if args.alone in ("full", "both"):
        for site in sites:
            full[site.name] = test_score(train_alone(site / "dataset.json", out / "alone" / site.name, minutes,
                                                     args.threads), test_cases)
            print(f"{site.name} alone with the whole machine: {json.dumps(full[site.name])}")
    atomic_write_text(out / "result.json", json.dumps({"federated": fed, "central": central, "alone_shared": shared,
                                                       "alone_full": full, "rounds": rounds, "local_steps": steps,
                                                       "federated_minutes": fed_minutes, "minutes": minutes},
                                                      indent=1))
    alone = " ".join(f"{key}={scores[best(scores)]['dice_mean']:.4f} {key[:-5]}={best(scores)}"
                     for key, scores in (("best_site_dice", shared), ("best_site_full_dice", full)) if scores)
    print(f"RESULT fed_dice={fed['dice_mean']:.4f} central_dice={central['dice_mean']:.4f} {alone} {run}")


if __name__ == "__main__":
    main()
