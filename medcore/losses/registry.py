"""Build losses by name from a JSON-serialisable config: ``build_loss({"name": "dice_ce", "softmax": True})``."""

from __future__ import annotations

from torch import nn

from medcore.networks.registry import build_from_registry, registrar

_LOSSES: dict[str, type[nn.Module]] = {}

#: Class decorator: register a loss under a name; instances get ``.config`` that rebuilds them.
register_loss = registrar(_LOSSES, "loss")


def loss_names() -> list[str]:
    """Sorted names accepted by :func:`build_loss`."""
    return sorted(_LOSSES)


def build_loss(config: dict) -> nn.Module:
    """Construct the registered loss ``config["name"]`` with the remaining fields as arguments."""
    return build_from_registry(config, _LOSSES, "loss")
