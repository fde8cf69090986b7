"""Where a CPU training step goes: medcore's hippocampus network against the MONAI baseline, phase by phase.

    .venv/bin/python -m benchmarks.train_profile [--threads 2] [--steps 8] [--cases 8] [--no-compile]

Both networks as ``benchmarks/hippocampus.py`` races them, on the same batch (2) and patch (40x56x40):
medcore's planned DynUNet (deep supervision, DiceCE, AdamW) and the baseline's MONAI UNet (DiceCE, Adam).
For each: median milliseconds of forward with the loss, backward and the optimiser step over ``--steps``
steps after a warm-up, on random data. For medcore also: the step in channels-last against contiguous
memory, bf16 autocast against fp32 (oneDNN runs bf16 natively on CPUs with AMX or AVX-512 BF16), batch
4 against batch 2 (samples/s: fewer, larger steps), ``torch.compile`` (inductor) with its compile time,
and the loader's share: one augmented batch from the preprocessing cache of ``--cases`` real cases, made
on one core as a loader worker makes it (the trainer overlaps it with the step; the data-wait share of
step time the training runs report is what is left of it). The last line is
``RESULT medcore_step_ms=... monai_step_ms=... samples_per_s_ratio=... forward_share=... ...``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from benchmarks.hippocampus import BATCH, PATCH, monai_unet
from medcore.engine.amp import Precision, choose_precision, cpu_has_native_bf16, full_precision
from medcore.engine.presets import default_data_root, find_msd_cases, fingerprint, make_plan

FULL = Precision()  # fp32


def phase_ms(model: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer, x: torch.Tensor,
             y: torch.Tensor, steps: int, precision: Precision = FULL) -> dict[str, float]:
    """Median milliseconds of forward+loss, backward and optimiser step, and of the whole step; the forward
    under ``precision``'s autocast and the loss in full precision, as the trainer runs them."""
    rows = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        optimizer.zero_grad()
        with precision.autocast():
            out = model(x)
        loss = loss_fn(full_precision(out), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        rows.append((t1 - t0, t2 - t1, t3 - t2, t3 - t0))
    rows = rows[1:]  # the warm-up step allocates
    return {name: 1000 * statistics.median(r[i] for r in rows)
            for i, name in enumerate(("forward", "backward", "optimizer", "step"))}


def batch(size: int, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size, 1, *PATCH, generator=gen)
    y = torch.randint(0, 3, (size, 1, *PATCH), generator=gen)
    return (x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x), y


def medcore_parts(plan: dict, channels_last: bool) -> tuple[torch.nn.Module, Callable, torch.optim.Optimizer]:
    import medcore.networks.dynunet  # noqa: F401  (registers "dynunet")
    from medcore.engine.optim import build_optimizer
    from medcore.losses import build_loss
    from medcore.networks import build_network

    torch.manual_seed(0)
    model = build_network(plan["network"]).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model, build_loss(plan["loss"]), build_optimizer(plan["optimizer"], model.parameters())


def loader_ms(plan: dict, n_cases: int, batches: int = 6) -> float:
    """Median milliseconds to make one augmented training batch from the cache, on one core."""
    from medcore.engine.data import EpochDataset
    from medcore.engine.segmentation import (
        CachedCases,
        TrainingSample,
        case_dataset,
        preprocessing_configs,
        training_transforms,
    )

    cases = find_msd_cases(default_data_root() / "hippocampus")[:n_cases]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as cache:
            dataset = case_dataset([{**c, "id": str(i)} for i, c in enumerate(cases)],
                                   preprocessing_configs(plan), cache)
            items = EpochDataset(CachedCases(dataset, range(len(cases))), TrainingSample(training_transforms(plan)))
            times = []
            for b in range(batches + 1):
                t = time.perf_counter()
                for k in range(plan["batch_size"]):
                    items[(0, b * plan["batch_size"] + k, (b * plan["batch_size"] + k) % len(cases))]
                times.append(time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return 1000 * statistics.median(times[1:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--cases", type=int, default=8, help="real cases cached for the loader's timing")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes of compilation)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cases = find_msd_cases(default_data_root() / "hippocampus")
    plan = make_plan(fingerprint(cases), "hippocampus", "cpu")
    assert tuple(plan["patch_size"]) == PATCH and plan["batch_size"] == BATCH, (plan["patch_size"], plan["batch_size"])

    med = phase_ms(*medcore_parts(plan, True), *batch(BATCH, True), args.steps)
    med_contiguous = phase_ms(*medcore_parts(plan, False), *batch(BATCH, False), args.steps)
    med_bf16 = phase_ms(*medcore_parts(plan, True), *batch(BATCH, True), args.steps, choose_precision("cpu", "bf16"))
    med_b4 = phase_ms(*medcore_parts(plan, True), *batch(2 * BATCH, True), args.steps)
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    unet = monai_unet().train()
    mon = phase_ms(unet, DiceCELoss(to_onehot_y=True, softmax=True), torch.optim.Adam(unet.parameters(), lr=1e-3),
                   *batch(BATCH, False), args.steps)
    compiled = {"step": float("nan")}
    compile_s = float("nan")
    if not args.no_compile:
        model, loss_fn, opt = medcore_parts(plan, True)
        fast = torch.compile(model)  # shares the parameters the optimiser holds
        t = time.perf_counter()
        phase_ms(fast, loss_fn, opt, *batch(BATCH, True), 1)  # the first steps compile
        compile_s = time.perf_counter() - t
        compiled = phase_ms(fast, loss_fn, opt, *batch(BATCH, True), args.steps)
    load = loader_ms(plan, args.cases)

    def show(name: str, r: dict[str, float], size: int = BATCH) -> None:
        print(f"{name:32s} step {r['step']:7.1f} ms  forward {r.get('forward', float('nan')):7.1f}  "
              f"backward {r.get('backward', float('nan')):7.1f}  optimizer {r.get('optimizer', float('nan')):6.1f}  "
              f"samples/s {1000 * size / r['step']:6.2f}")

    show("medcore DynUNet, channels-last", med)
    show("medcore DynUNet, contiguous", med_contiguous)
    show("medcore DynUNet, bf16 autocast", med_bf16)
    show("medcore DynUNet, batch 4", med_b4, 2 * BATCH)
    show("medcore DynUNet, torch.compile", compiled)
    show("MONAI baseline UNet", mon)
    print(f"loader: one augmented batch of {BATCH} on one core: {load:.1f} ms ({load / med['step']:.0%} of a step)")
    print(f"RESULT medcore_step_ms={med['step']:.1f} monai_step_ms={mon['step']:.1f} "
          f"samples_per_s_ratio={mon['step'] / med['step']:.2f} forward_share={med['forward'] / med['step']:.3f} "
          f"backward_share={med['backward'] / med['step']:.3f} optimizer_share={med['optimizer'] / med['step']:.3f} "
          f"loader_ms={load:.1f} loader_share={load / med['step']:.3f} "
          f"channels_last_speedup={med_contiguous['step'] / med['step']:.2f} "
          f"bf16_speedup={med['step'] / med_bf16['step']:.2f} native_bf16={int(cpu_has_native_bf16())} "
          f"batch4_samples_speedup={2 * med['step'] / med_b4['step']:.2f} "
          f"compile_speedup={med['step'] / compiled['step']:.2f} compile_s={compile_s:.1f} threads={args.threads}")


if __name__ == "__main__":
    main()
