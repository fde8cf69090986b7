"""Stage ``cache``: the medcore preprocessing cache for one dataset version (the files training reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from medcore.utils.atomic import sweep_tmp
from pipelines.steps.layout import Layout
from pipelines.steps.results import CacheInfo, save

if TYPE_CHECKING:
    from medcore.engine.run import Prepared


def training_config(params: dict, layout: Layout, cache_dir: Path | None, model_dir: Path | None = None) -> dict:
    """The ``medcore train`` config for the pipeline's dataset and parameters: the plan comes from the data
    through medcore's planner (preset ``datalist``: modality and class names from ``dataset.json``);
    ``params["plan"]`` overrides any planned field; unset loop lengths come from the time budget."""
    t = params["train"]
    loop = {k: int(t[k]) for k in ("max_epochs", "samples_per_epoch", "checkpoint_every_steps") if t[k] is not None}
    return {
        "preset": "datalist",
        "datalist": str(layout.dataset_dir / "dataset.json"),
        "split": {"fraction": float(t["val_fraction"]), "seed": int(t["seed"])},
        "plan": dict(params["plan"]),
        "train": {**loop, "seed": int(t["seed"])},
        "time_budget_minutes": float(t["time_budget_minutes"]) if t["time_budget_minutes"] else None,
        "device": "auto",
        "threads": int(t["threads"]) if t["threads"] else None,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "model_dir": str(model_dir) if model_dir else None,
    }


def expected_cache(params: dict) -> Prepared:
    """The training run's preparation (cases, split, plan, cache folder and key): medcore's own
    ``prepare_run`` on the config ``train`` will use, so the two cannot drift apart."""
    from medcore.engine.run import prepare_run

    layout = Layout.from_params(params)
    return prepare_run(training_config(params, layout, layout.cache_dir))


def build_preprocessed_cache(params: dict) -> CacheInfo:
    """Preprocess every case once into ``cache/`` (cases already cached, by content, are reused)."""
    layout = Layout.from_params(params)
    layout.cache_dir.mkdir(parents=True, exist_ok=True)
    sweep_tmp(layout.cache_dir)
    for stale in layout.cache_dir.glob(".*.tmp*"):  # an atomic write cut short by a kill
        stale.unlink(missing_ok=True)
    prep = expected_cache(params)
    manifest = prep.build_cache(progress=True)
    entries = [k for split in ("train", "val") for k in manifest[split]["entries"]]
    files = [prep.manifest_path.name] + [f"{k}.safetensors" for k in entries]
    info = CacheInfo(prep.cache_key, len(manifest["train"]["ids"]), len(manifest["val"]["ids"]),
                     tuple(c["id"] for split in ("train", "val") for c in manifest[split]["skipped"]),
                     tuple(files), sum((layout.cache_dir / f).stat().st_size for f in files))
    save(layout.cache_dir / "cache.json", info)
    return info


def cache_ready(params: dict) -> Path | None:
    """The cache folder when it holds everything training will read, else None (training then builds its own)."""
    try:
        prep = expected_cache(params)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return prep.cache_dir if prep.read_manifest() is not None else None
