"""The ``medcore train`` config file (JSON or YAML): which preset, data, split, plan overrides and loop settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, Any] = {
    "preset": "hippocampus",
    "data_dir": None,            # default: the preset's folder under $MEDCORE_TEST_DATA, or generated
    "datalist": None,            # an MSD dataset.json (or task folder) instead of data_dir, via medcore.data
    "split": {"fraction": 0.2, "seed": 0, "folds": None, "fold": 0},
    "max_cases": None,           # use only the first N cases (quick runs)
    "max_val_cases": None,       # validate on at most N of the validation cases
    "plan": {},                  # overrides of the derived plan (patch_size, base_filters, optimizer, ...)
    "train": {},                 # TrainerConfig fields (max_epochs, val_every, checkpoint_every_steps, ...)
    "time_budget_minutes": None,  # choose max_epochs from a timing calibration to fit this budget
    "device": "auto",
    "threads": None,             # torch CPU threads per process (default: torch's choice)
    "model_dir": None,           # default: RUN_DIR/model
    "cache_dir": None,           # default: RUN_DIR/cache
}


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a JSON or YAML config file and fill in defaults; unknown fields are refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist; pass --config FILE (JSON or YAML)")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as error:  # json and yaml raise different types
        raise ValueError(f"config file {path} cannot be parsed ({error}); fix its syntax") from error
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"config file {path} must hold a mapping at the top level, got {type(raw).__name__}")
    try:
        return resolve_config(raw)
    except ValueError as error:
        raise ValueError(f"config file {path}: {error}") from error


def resolve_config(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` merged over :data:`DEFAULTS` (one level deep for ``split``)."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: {sorted(DEFAULTS)}")
    config = {**DEFAULTS, **raw}
    config["split"] = {**DEFAULTS["split"], **(raw.get("split") or {})}
    for key in ("plan", "train", "split"):
        if not isinstance(config[key], dict):
            raise ValueError(f"field {key!r} must be a mapping, got {type(config[key]).__name__}")
    return config
