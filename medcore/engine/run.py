"""One training run from a config: plan, cache, train (1 process or torchrun), export a MODEL_DIR, summarise.

:func:`prepare_run` is the one place that turns a config into cases, split, plan, preprocessing and
the preprocessing cache (its folder, key and manifest); :func:`run_training` and the pipeline's
``cache`` stage both call it, so they cannot disagree about which cache a run reads.

Files in ``run_dir`` (rank 0 only): ``config.json`` (resolved), ``plan.json`` (choices and reasons),
``split.json`` (case ids), ``train_config.json`` (loop settings, fixed at the first start so a resume
continues the same schedule), ``history.*``, ``curves.png``, ``checkpoints/``, ``model/`` and
``summary.json`` (machine-readable outcome, written last). The cache folder (``cache_dir``, default
``run_dir/cache``) holds one content-addressed entry per case and ``cases-<key>.json`` per split
(which entries a run uses and which cases were skipped, with the reason).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from medcore.data.dataset import ItemError
from medcore.data.persistent import PersistentDataset, to_json
from medcore.engine.amp import full_precision
from medcore.engine.config import resolve_config
from medcore.engine.data import EpochDataset
from medcore.engine.distributed import DistContext, barrier, choose_device, init_distributed
from medcore.engine.presets import default_data_root, find_msd_cases, fingerprint, make_plan, preset, split_cases
from medcore.engine.segmentation import (
    CachedCases,
    SegmentationEvaluator,
    TrainingSample,
    case_dataset,
    make_synthetic_ct,
    postprocessing_decision,
    preprocessing_configs,
    training_transforms,
)
from medcore.engine.trainer import Trainer, TrainerConfig
from medcore.utils.atomic import atomic_write_text

MANIFEST_FORMAT = 1


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def resolve_cases(config: dict, run_dir: Path | None, ctx: DistContext) -> list[dict]:
    """The cases: a datalist, an MSD-layout folder (given, or the preset's default), or generated synthetic CT."""
    info = preset(config["preset"])
    if config["datalist"]:
        from medcore.data.datalist import case_id, load_datalist

        items = load_datalist(config["datalist"])
        cases = [
            {"id": case_id(item), "image": item["image"], "label": item["label"]} for item in items if "label" in item
        ]
        if not cases:
            raise ValueError(f"datalist {config['datalist']}: no training entries with both image and label")
        return cases[:config["max_cases"]] if config["max_cases"] else cases
    data_dir = config["data_dir"]
    if data_dir is None and info["data_dir"] is not None:
        data_dir = default_data_root() / info["data_dir"]
    if data_dir is None:
        if run_dir is None:
            raise ValueError(f"preset {config['preset']!r} generates its data into RUN_DIR/data; pass a run "
                             "folder, or set data_dir or datalist in the config")
        data_dir = run_dir / "data"
        if ctx.is_main:
            make_synthetic_ct(data_dir, num_cases=info.get("num_cases", 24))
        barrier(ctx)
    cases = find_msd_cases(data_dir)
    return cases[:config["max_cases"]] if config["max_cases"] else cases


def datalist_label_names(path: str | Path) -> dict[str, int]:
    """``{name: value}`` from an MSD ``dataset.json``'s ``labels`` field (``{"1": "liver"}``), or ``{}``.

    A model trained from a datalist is then registered with the dataset's own class names rather
    than the preset's."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return {}
    labels = json.loads(path.read_text()).get("labels") or {}
    try:
        return {str(name): int(value) for value, name in labels.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{path}: 'labels' must map integer values to names, got {labels!r}") from None


def datalist_modality(path: str | Path) -> str | None:
    """The modality of an MSD ``dataset.json`` (``{"modality": {"0": "MR"}}``: channel 0), or None."""
    path = Path(path)
    if path.suffix != ".json" or not path.is_file():
        return None
    modality = json.loads(path.read_text()).get("modality") or {}
    value = modality.get("0") if isinstance(modality, dict) else modality
    return str(value) if value else None


@dataclasses.dataclass
class Prepared:
    """A run's cases, split, plan (``plan["preprocessing"]`` included) and preprocessing cache.

    ``cache_dir`` holds one content-addressed entry per case (``dataset``, a memory-mapped
    ``PersistentDataset`` over train + val cases, in that order) and the manifest
    ``cases-<cache_key>.json``, written by :meth:`build_cache`; :meth:`open_cache` reads it.
    """

    config: dict
    train_cases: list[dict]
    val_cases: list[dict]
    plan: dict
    preprocessing: list[dict]
    cache_dir: Path
    cache_key: str
    dataset: PersistentDataset = dataclasses.field(repr=False)

    @property
    def manifest_path(self) -> Path:
        return self.cache_dir / f"cases-{self.cache_key}.json"

    def _splits(self) -> dict[str, range]:
        n = len(self.train_cases)
        return {"train": range(n), "val": range(n, n + len(self.val_cases))}

    def read_manifest(self) -> dict | None:
        """The manifest, or None when it is missing, unreadable or lists an entry that is not there."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
            entries = [k for name in ("train", "val") for k in manifest[name]["entries"]]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("key") != self.cache_key:
            return None
        return manifest if all((self.cache_dir / f"{k}.safetensors").is_file() for k in entries) else None

    def build_cache(self, progress: bool = True) -> dict:
        """Preprocess every case not cached yet and write the manifest (one process: rank 0); a no-op
        when the manifest and its entries exist. A case that cannot be read or preprocessed is left
        out with its reason (the run goes on without it); only having no usable training case is an error."""
        manifest = self.read_manifest()
        if manifest is not None:
            return manifest
        manifest = {"format": MANIFEST_FORMAT, "key": self.cache_key, "preprocessing": self.preprocessing}
        cases = self.train_cases + self.val_cases
        for name, indices in self._splits().items():
            ids, entries, skipped = [], [], []
            for i in tqdm(indices, desc=f"preprocess {name}", disable=not progress, leave=False):
                try:
                    self.dataset.prepared(i)
                except ItemError as error:
                    skipped.append({"id": cases[i]["id"], "reason": str(error)})
                    tqdm.write(f"skipping case {cases[i]['id']}: {error}")
                    continue
                ids.append(cases[i]["id"])
                entries.append(self.dataset.keys[i])
            if not ids and name == "train":  # no usable validation case only means no validation
                raise ValueError(f"none of the {len(indices)} training cases could be preprocessed into "
                                 f"{self.cache_dir}; first error: {skipped[0]['reason'] if skipped else 'no cases'}")
            manifest[name] = {"ids": ids, "entries": entries, "skipped": skipped}
        atomic_write_text(self.manifest_path, json.dumps(manifest, indent=1) + "\n")
        return manifest

    def open_cache(self) -> tuple[CachedCases, CachedCases]:
        """``(train, val)`` cached cases as the manifest lists them (after :meth:`build_cache`; any rank)."""
        manifest = self.read_manifest()
        if manifest is None:
            raise FileNotFoundError(f"{self.manifest_path} is missing or lists missing entries; build the cache "
                                    "first (Prepared.build_cache, run by rank 0 before a barrier)")
        out = []
        for name, indices in self._splits().items():
            where = {self.dataset.keys[i]: i for i in indices}
            entries = manifest[name]["entries"]
            if any(k not in where for k in entries):
                raise ValueError(f"{self.manifest_path} lists {name} entries this process did not derive from the "
                                 "input files (were they changed during the run?); rerun")
            out.append(CachedCases(self.dataset, [where[k] for k in entries], manifest[name]["skipped"]))
        return out[0], out[1]


def prepare_run(config: dict, run_dir: str | Path | None = None, ctx: DistContext | None = None,
                progress: bool = False) -> Prepared:
    """Cases, split, plan, preprocessing and cache location/key for ``config`` (raw or resolved).

    Every rank may call it (it writes only the synthetic data, on rank 0, and the cache's file-hash
    index); ``run_dir`` is needed only for generated data and the default ``cache_dir``. Then
    ``prepared.build_cache()`` (one process) and ``prepared.open_cache()`` (every process).
    """
    config = resolve_config(config)
    run_dir = Path(run_dir).resolve() if run_dir is not None else None
    ctx = ctx or DistContext(device=choose_device(0, config["device"]))
    cases = resolve_cases(config, run_dir, ctx)
    split = config["split"]
    train_cases, val_cases = split_cases(cases, split["fraction"], split["seed"], split["folds"], split["fold"])
    if config["max_val_cases"]:
        val_cases = val_cases[:config["max_val_cases"]]
    overrides = dict(config["plan"] or {})
    if config["datalist"] and "labels" not in overrides:
        names = datalist_label_names(config["datalist"])
        if names:
            overrides["labels"] = names
    if config["datalist"] and "modality" not in overrides:
        modality = datalist_modality(config["datalist"])
        if modality:
            overrides["modality"] = modality
    plan = make_plan(fingerprint(train_cases), config["preset"], ctx.device, overrides)
    pre = preprocessing_configs(plan)
    plan["preprocessing"] = pre
    if config["cache_dir"]:
        cache_dir = Path(config["cache_dir"])
    elif run_dir is not None:
        cache_dir = run_dir / "cache"
    else:
        raise ValueError("no cache folder: set cache_dir in the config or pass a run folder")
    dataset = case_dataset(train_cases + val_cases, pre, cache_dir, progress)
    listing = {name: [[c["id"], k] for c, k in zip(part, keys)] for name, part, keys in
               (("train", train_cases, dataset.keys[:len(train_cases)]),
                ("val", val_cases, dataset.keys[len(train_cases):]))}
    key = hashlib.blake2b(to_json({"format": MANIFEST_FORMAT, **listing}).encode(), digest_size=10).hexdigest()
    return Prepared(config, train_cases, val_cases, plan, pre, cache_dir, key, dataset)


def calibrate_step_seconds(model: torch.nn.Module, loss_fn: torch.nn.Module, plan: dict, device: str,
                           steps: int = 3, channels_last: bool = True, amp: str = "auto") -> float:
    """Seconds per training step of a copy of ``model`` on a random batch (global RNG untouched), in the
    memory layout and precision the trainer will use."""
    from medcore.engine.amp import choose_precision, use_channels_last
    from medcore.engine.optim import build_optimizer

    probe = copy.deepcopy(model).to(device).train()
    opt = build_optimizer(plan["optimizer"], probe.parameters())
    precision = choose_precision(device, amp)
    with torch.random.fork_rng(devices=[]):
        x = torch.randn(plan["batch_size"], 1, *plan["patch_size"], device=device)
        y = torch.randint(0, plan["num_classes"], (plan["batch_size"], 1, *plan["patch_size"]), device=device)
        if channels_last and use_channels_last(probe, device, x.ndim - 2):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return time_training_steps(probe, loss_fn, opt, x, y, precision.autocast, steps)


def time_training_steps(model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        x: torch.Tensor, y: torch.Tensor, autocast, steps: int = 3) -> float:
    """Median seconds of ``steps`` optimiser steps on ``(x, y)`` after one warm-up step; ``autocast()``
    gives the precision context. The GPU is synchronised, so the times are real."""
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        optimizer.zero_grad()
        with autocast():
            out = model(x)
        loss = loss_fn(full_precision(out), y)
        loss.backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def loop_settings(config: dict, plan: dict, num_train: int, num_val: int, step_seconds: float | None,
                  world_size: int, device: str = "cpu") -> dict:
    """TrainerConfig fields: the plan's optimiser/schedule/batch, config overrides, and a budget-derived length.

    Augmentation runs in loader workers, which prepare batches while the model steps: on a GPU up to
    four (a GPU step is faster than the augmentation of its batch on one core); on the CPU one, when
    the rank has a second core (the augmentation is a few per cent of a CPU step)."""
    cores_per_rank = max(1, (os.cpu_count() or 1) // world_size)
    workers = max(0, min(4, cores_per_rank - 2)) if device.startswith("cuda") else min(1, cores_per_rank - 1)
    settings: dict[str, Any] = {"batch_size": plan["batch_size"], "optimizer": plan["optimizer"],
                                "schedule": plan["schedule"], "samples_per_epoch": max(num_train, 100),
                                "val_every": 1, "checkpoint_every_steps": 50, "max_epochs": 50,
                                "num_workers": workers}
    budget = config["time_budget_minutes"]
    if budget and step_seconds:
        block, budget_s = settings["batch_size"] * world_size, budget * 60.0
        val_seconds = math.ceil(num_val / world_size) * step_seconds * 0.6  # forward + metrics per case
        validations = max(1, min(6, int(0.06 * budget_s / max(val_seconds, 1e-6))))  # ~6% of the budget
        total_steps = max(1, int((budget_s - validations * val_seconds) / (step_seconds * 1.05)))
        # epochs of at least ~15 s and mid-epoch checkpoints about every 30 s, so the per-epoch checkpoint,
        # history and plot stay a small part of fast (GPU) steps
        steps_per_epoch = max(settings["samples_per_epoch"] // block, math.ceil(15.0 / step_seconds))
        if total_steps < 4 * steps_per_epoch:  # short budget: shorter epochs, still several of them
            steps_per_epoch = max(1, total_steps // 4)
        settings["samples_per_epoch"] = steps_per_epoch * block
        settings["checkpoint_every_steps"] = max(50, math.ceil(30.0 / step_seconds))
        settings["max_epochs"] = max(1, total_steps // steps_per_epoch)
        settings["val_every"] = max(1, math.ceil(settings["max_epochs"] / validations))
        settings["max_train_seconds"] = budget_s
    settings.update(config["train"])
    return settings


def run_training(raw_config: dict, run_dir: str | Path, progress: bool = True) -> dict:
    """Train as ``raw_config`` says into ``run_dir`` (resuming if a checkpoint is there); return the summary."""
    import medcore.networks.dynunet  # noqa: F401  (registers "dynunet")
    from medcore.inferers.model_dir import save_model_dir
    from medcore.losses import build_loss
    from medcore.networks import build_network

    config = resolve_config(raw_config)
    run_dir = Path(run_dir).resolve()
    if config["threads"]:
        torch.set_num_threads(int(config["threads"]))
    ctx = init_distributed(config["device"])
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", config)
    started = time.perf_counter()
    prep = prepare_run(config, run_dir, ctx, progress=progress and ctx.is_main)
    plan, pre, split = prep.plan, prep.preprocessing, config["split"]
    train_cases, val_cases = prep.train_cases, prep.val_cases
    if ctx.is_main:
        _write_json(run_dir / "plan.json", plan)
        _write_json(run_dir / "split.json", {"train": [c["id"] for c in train_cases],
                                             "val": [c["id"] for c in val_cases], **split})
        prep.build_cache(progress)
    barrier(ctx)  # every rank memory-maps the entries rank 0 wrote
    train_data, val_data = prep.open_cache()

    torch.manual_seed(int(config["train"].get("seed", 0)))
    model = build_network(plan["network"])
    loss_fn = build_loss(plan["loss"])
    settings_path = run_dir / "train_config.json"
    # rank 0 fixes the loop settings once (a resume keeps the schedule the run started with); every
    # rank then reads the same file, so all agree on epochs and steps
    if ctx.is_main and not settings_path.is_file():
        train = config["train"]
        step_s = (
            calibrate_step_seconds(
                model,
                loss_fn,
                plan,
                ctx.device,
                channels_last=train.get("channels_last", True),
                amp=train.get("amp", "auto"),
            )
            if config["time_budget_minutes"]
            else None
        )
        settings = loop_settings(config, plan, len(train_data), len(val_data), step_s, ctx.world_size, ctx.device)
        settings["progress"] = progress
        _write_json(settings_path, {**settings, "calibrated_step_seconds": step_s})
    barrier(ctx)
    settings = json.loads(settings_path.read_text())
    settings.pop("calibrated_step_seconds", None)
    trainer_config = TrainerConfig.from_dict(settings)
    augment = TrainingSample(training_transforms(plan))
    evaluator = SegmentationEvaluator(val_data, plan, progress) if len(val_data) else None
    trainer = Trainer(model, loss_fn, EpochDataset(train_data, augment, seed=trainer_config.seed), run_dir,
                      trainer_config, evaluator=evaluator, ctx=ctx)
    summary = trainer.fit()
    if ctx.is_main:
        best = (
            run_dir / "checkpoints" / ("best.safetensors" if summary["best_epoch"] is not None else "last.safetensors")
        )
        from medcore.engine.checkpoint import load_checkpoint

        export = build_network(plan["network"])
        export.load_state_dict(load_checkpoint(best)["model"])
        best_record = next((r for r in trainer.history.records if r["epoch"] == summary["best_epoch"]), {})
        val_metrics = {k: v for k, v in best_record.items() if k.startswith("val_")}
        post = postprocessing_decision(val_metrics, plan["labels"])
        model_dir = Path(config["model_dir"] or run_dir / "model")
        save_model_dir(model_dir, export, preprocessing=pre, inference=plan["inference"], labels=plan["labels"],
                       postprocessing=post["configs"],
                       provenance={"preset": config["preset"], "epoch": summary["best_epoch"],
                                   "validation": val_metrics, "train_cases": len(train_cases),
                                   "val_cases": len(val_cases), "checkpoint": best.name,
                                   "postprocessing": {k: v for k, v in post.items() if k != "configs"}})
        summary.update({"model_dir": str(model_dir), "validation": val_metrics, "plan": "plan.json",
                        "postprocessing": post["keep_largest"],
                        "train_cases": len(train_data), "val_cases": len(val_data),
                        "skipped_cases": train_data.skipped + val_data.skipped,
                        "wall_seconds": time.perf_counter() - started})
        _write_json(run_dir / "summary.json", summary)
    barrier(ctx)
    return summary
