"""Save and load network weights without pickle: safetensors, or ``torch.load(weights_only=True)``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from medcore.networks.registry import build_network
from medcore.utils.atomic import atomic_write_bytes, atomic_write_text


def save_weights(module: nn.Module, path: str | Path) -> None:
    """Write ``module.state_dict()`` to ``path`` as safetensors, atomically (shared tensors are copied)."""
    state = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write_bytes(path, save(state))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file read with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; train a model or point to its weights")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} does not hold a state dict; save one with save_weights")
    return state


def load_weights(module: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load the weights at ``path`` into ``module`` (in place) and return it."""
    try:
        module.load_state_dict(read_weights(path), strict=strict)
    except RuntimeError as error:
        name = getattr(module, "config", {}).get("name", type(module).__name__)
        raise ValueError(f"weights in {path} do not fit the network {name!r}: {error}. Rebuild the network from "
                         "the config saved with these weights.") from error
    return module


def save_network(module: nn.Module, directory: str | Path, config_name: str = "network.json",
                 weights_name: str = "weights.safetensors") -> None:
    """Write ``module.config`` as JSON and its weights as safetensors into ``directory``."""
    if not hasattr(module, "config"):
        raise ValueError("module has no .config; build it with medcore.networks.build_network")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / config_name, json.dumps(module.config, indent=2) + "\n")
    save_weights(module, directory / weights_name)


def load_network(directory: str | Path, config_name: str = "network.json",
                 weights_name: str = "weights.safetensors") -> nn.Module:
    """Rebuild the network from ``directory/config_name`` and load ``directory/weights_name``."""
    directory = Path(directory)
    config_path = directory / config_name
    if not config_path.is_file():
        raise FileNotFoundError(f"network config {config_path} does not exist; save the model with save_network")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"network config {config_path} is not valid JSON: {error}") from error
    return load_weights(build_network(config), directory / weights_name)
