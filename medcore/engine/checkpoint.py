"""Checkpoints without pickle: one safetensors file whose header metadata carries the JSON rest.

A training state is a nested structure of dicts, lists, tuples, numbers, strings, tensors and
numpy arrays (model, optimiser, scheduler, scaler, RNG states, epoch, sampler position). Tensors go
into the safetensors body; the structure, with each tensor replaced by a reference, goes to JSON in
the header together with a SHA-256 over the tensor bytes. Loading parses JSON and raw tensor
bytes only, so nothing executes on load; a truncated or corrupted file is refused with a message
naming it. Writes are atomic (temporary file, then rename), so a kill leaves the previous file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from medcore.utils.atomic import atomic_write_bytes

FORMAT = "medcore-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted: missing, truncated, corrupted or of another format."""


def _encode(value: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{path}.{k}") for k, v in value.items()}
        return {"__items__": [[_encode(k, tensors, path), _encode(v, tensors, f"{path}[{k!r}]")]
                              for k, v in value.items()]}
    raise TypeError(f"checkpoint: cannot store {type(value).__name__} at {path or 'top level'}; "
                    "only tensors, arrays, numbers, strings, lists, tuples and dicts are allowed")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__items__"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"{key}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """Serialise ``state`` to the bytes of a checkpoint file."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(state, tensors, "")
    meta = {"format": FORMAT, "version": str(VERSION), "sha256": _digest(tensors),
            "state": json.dumps(structure, separators=(",", ":"))}
    return save_safetensors_bytes(tensors, metadata=meta)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically and return the path."""
    path = Path(path)
    atomic_write_bytes(path, checkpoint_bytes(state))
    return path


def _read_header(data: bytes, path: Path) -> dict:
    if len(data) < 8:
        raise CheckpointError(f"checkpoint {path} is truncated ({len(data)} bytes); delete it and resume "
                              "from an earlier checkpoint or restart training")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise CheckpointError(f"checkpoint {path} is truncated or not a medcore checkpoint (header of {n} bytes "
                              f"in a {len(data)}-byte file); delete it and resume from an earlier checkpoint")
    try:
        header = json.loads(data[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} has a corrupted header ({error}); it is not a medcore "
                              "checkpoint or was damaged; delete it and resume from an earlier one") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a malformed header; it is not a medcore checkpoint")
    return header


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else with a clear error.

    Only JSON and raw tensor bytes are parsed: pickled files (``torch.save`` of arbitrary objects)
    are refused, never unpickled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the run directory or start afresh")
    data = path.read_bytes()
    header = _read_header(data, path)
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a medcore checkpoint (format {meta.get('format')!r}); "
                              "medcore only resumes from files it wrote itself")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(f"checkpoint {path} has version {meta.get('version')!r}, this medcore reads "
                              f"version {VERSION}; resume with the medcore version that wrote it")
    try:
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted ({error}); delete it and resume "
                              "from an earlier checkpoint or restart training") from error
    if _digest(tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} failed its SHA-256 check: the tensor data is corrupted; "
                              "delete it and resume from an earlier checkpoint or restart training")
    try:
        return _decode(json.loads(meta["state"]), tensors)
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
        raise CheckpointError(f"checkpoint {path} has a corrupted state record ({error}); delete it") from error
