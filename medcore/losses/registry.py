"""Build losses by name from a JSON-serialisable config: ``build_loss({"name": "dice_ce", "softmax": True})``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

from medcore.networks.registry import build_from_registry, record_config

_LOSSES: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type)


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator: register ``cls`` under ``name``; instances get ``.config`` that rebuilds them."""

    def decorate(cls: T) -> T:
        if name in _LOSSES:
            raise ValueError(f"loss name {name!r} is already registered to {_LOSSES[name].__name__}")
        _LOSSES[name] = record_config(name)(cls)
        return cls

    return decorate


def loss_names() -> list[str]:
    """Sorted names accepted by :func:`build_loss`."""
    return sorted(_LOSSES)


def build_loss(config: dict) -> nn.Module:
    """Construct the registered loss ``config["name"]`` with the remaining fields as arguments."""
    return build_from_registry(config, _LOSSES, "loss")
