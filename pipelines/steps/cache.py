"""Stage ``cache``: the medcore preprocessing cache for one dataset version (the files training reads)."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.steps.layout import Layout, sweep_tmp, write_json


def training_config(params: dict, layout: Layout, cache_dir: Path | None, model_dir: Path | None = None) -> dict:
    """The ``medcore train`` config for the pipeline's dataset and parameters."""
    t = params["train"]
    return {
        "preset": "synthetic_ct",
        "datalist": str(layout.dataset_dir / "dataset.json"),
        "split": {"fraction": float(t["val_fraction"]), "seed": int(t["seed"])},
        "plan": {"patch_size": list(t["patch_size"]), "base_filters": int(t["base_filters"]),
                 "batch_size": int(t["batch_size"])},
        "train": {"max_epochs": int(t["max_epochs"]), "samples_per_epoch": int(t["samples_per_epoch"]),
                  "val_every": 1, "checkpoint_every_steps": 2, "seed": int(t["seed"])},
        "device": "auto",
        "threads": int(t["threads"]) if t["threads"] else None,
        "cache_dir": str(cache_dir) if cache_dir else None,
        "model_dir": str(model_dir) if model_dir else None,
    }


def expected_cache(params: dict) -> dict:
    """The plan, split and cache file names the training will look for (same logic as medcore's run_training)."""
    from medcore.data.datalist import case_id, load_datalist
    from medcore.engine.config import resolve_config
    from medcore.engine.presets import fingerprint, make_plan, split_cases
    from medcore.engine.segmentation import cache_key, preprocessing_configs

    layout = Layout.from_params(params)
    config = resolve_config(training_config(params, layout, layout.cache_dir))
    items = load_datalist(config["datalist"])
    cases = [{"id": case_id(i), "image": i["image"], "label": i["label"]} for i in items if "label" in i]
    split = config["split"]
    train, val = split_cases(cases, split["fraction"], split["seed"], split["folds"], split["fold"])
    plan = make_plan(fingerprint(train), config["preset"], "cpu", config["plan"])
    pre = preprocessing_configs(plan)
    key = cache_key(train + val, pre)
    return {"train": train, "val": val, "pre": pre, "key": key,
            "train_file": layout.cache_dir / f"train-{key}.safetensors",
            "val_file": layout.cache_dir / f"val-{key}.safetensors"}


def build_preprocessed_cache(params: dict) -> dict:
    """Preprocess every case once into ``cache/`` (skipped when the content-addressed files exist)."""
    from medcore.engine.segmentation import build_cache

    layout = Layout.from_params(params)
    layout.cache_dir.mkdir(parents=True, exist_ok=True)
    sweep_tmp(layout.cache_dir)
    exp = expected_cache(params)
    build_cache(exp["train"], exp["pre"], exp["train_file"], progress=True)
    build_cache(exp["val"], exp["pre"], exp["val_file"], progress=True)
    info = {"cache_key": exp["key"], "train_cases": len(exp["train"]), "val_cases": len(exp["val"]),
            "files": [exp["train_file"].name, exp["val_file"].name],
            "bytes": sum(p.stat().st_size for p in (exp["train_file"], exp["val_file"]))}
    write_json(layout.cache_dir / "cache.json", info)
    return info


def cache_ready(params: dict) -> Path | None:
    """The cache folder when it holds the files training expects, else None (training then builds its own)."""
    try:
        exp = expected_cache(params)
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return exp["train_file"].parent if exp["train_file"].is_file() and exp["val_file"].is_file() else None
