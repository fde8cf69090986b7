"""Pipeline parameters: ``params.yaml`` merged over built-in defaults, with paths made absolute."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULTS: dict[str, Any] = {
    "source": {"dicom_dir": "data/inbox/dicom", "label_manifest": "data/inbox/labels/labels.json",
               "settle_seconds": 30},
    "synthetic": {"n_patients": 3, "seed": 0, "shape": [40, 40, 20]},
    "output_dir": "outputs/pipeline",
    "dataset_dir": None,
    "deid_key_file": None,
    "train": {"nproc": 0, "time_budget_minutes": None, "max_epochs": None, "samples_per_epoch": None,
              "checkpoint_every_steps": None, "val_fraction": 0.2, "seed": 0, "threads": 1},
    "plan": {},  # overrides of any field of the plan medcore derives from the data (open mapping)
    "dataset": {"test_fraction": 0.2},
    "evaluate": {"min_dice": 0.0},
    "register": {"model_name": "medcore-segmentation", "experiment": "medcore-training", "tracking_uri": None,
                 "artifact_root": "mlartifacts", "min_improvement": 0.0, "min_test_cases": 10,
                 "bootstrap_samples": 2000},
    "dvc": {"remote": "outputs/dvc-remote"},
    "pacs": {"url": "http://127.0.0.1:8042/dicom-web", "auth_header_env": "MEDCORE_PACS_AUTH", "timeout_seconds": 30,
             "retries": 4, "backoff_seconds": 0.5, "modality": "CT", "min_slices": 8, "poll_seconds": 60},
}


def _merge(base: dict, override: dict, where: str) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ValueError(f"{where}: unknown parameter {key!r}; allowed: {sorted(base)}")
        if isinstance(base[key], dict) and not base[key]:  # an open mapping (plan): checked by its user
            if not isinstance(value, dict):
                raise ValueError(f"{where}: parameter {key!r} must be a mapping")
            out[key] = {**base[key], **value}
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: parameter {key!r} must be a mapping")
            out[key] = _merge(base[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def load_params(path: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                overrides: dict | None = None) -> dict[str, Any]:
    """Read ``params.yaml`` (default: the project's) and resolve paths against ``root``.

    ``path`` defaults to ``$MEDCORE_PARAMS``, else the project's ``params.yaml``; ``root`` defaults to
    the folder holding the params file. ``overrides`` (same nesting) win.
    """
    if path is None:
        path = os.environ.get("MEDCORE_PARAMS") or PROJECT_ROOT / "params.yaml"
    path = Path(path)
    raw: dict = {}
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc}); fix its syntax") from exc
    elif path != PROJECT_ROOT / "params.yaml":
        raise FileNotFoundError(f"params file {path} does not exist; pass --params params.yaml")
    params = _merge(DEFAULTS, raw, str(path))
    if overrides:
        params = _merge(params, overrides, "overrides")
    root = Path(root) if root is not None else path.resolve().parent
    params["root"] = str(root.resolve())
    params["params_file"] = str(path.resolve())
    return params


def resolve(params: dict, value: str | os.PathLike) -> Path:
    """``value`` as an absolute path (relative ones are under the params' root)."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(params["root"]) / p


def tracking_uri(params: dict) -> str:
    uri = params["register"]["tracking_uri"]
    return uri if uri else f"sqlite:///{Path(params['root']) / 'mlflow.db'}"
