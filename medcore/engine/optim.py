"""Optimisers from a JSON config: AdamW, and SGD with Nesterov momentum (nnU-Net's choice)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

DEFAULTS: dict[str, dict[str, Any]] = {
    "adamw": {"lr": 1e-3, "weight_decay": 1e-4, "betas": [0.9, 0.999], "eps": 1e-8},
    "sgd": {"lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5},
}


def build_optimizer(config: dict | None, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``{"name": "adamw" | "sgd", "lr": ..., ...}``; missing fields take the defaults above."""
    config = dict(config or {"name": "adamw"})
    name = str(config.pop("name", "adamw")).lower()
    if name not in DEFAULTS:
        raise ValueError(f"unknown optimizer {name!r} in config; choose one of {sorted(DEFAULTS)}")
    options = {**DEFAULTS[name], **config}
    unknown = sorted(set(options) - set(DEFAULTS[name]))
    if unknown:
        raise ValueError(f"optimizer {name!r} config has unknown field(s) {unknown}; allowed: "
                         f"{sorted(DEFAULTS[name])}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=float(options["lr"]), betas=tuple(options["betas"]),
                                 eps=float(options["eps"]), weight_decay=float(options["weight_decay"]))
    return torch.optim.SGD(params, lr=float(options["lr"]), momentum=float(options["momentum"]),
                           nesterov=bool(options["nesterov"]), weight_decay=float(options["weight_decay"]))
