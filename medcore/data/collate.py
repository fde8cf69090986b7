"""Collation of samples (including multi-sample crops) into batches, and back.

``collate(batch)`` takes a list of samples where each sample is a dict (or a single ``Image``), or a
LIST of them (the N crops of one volume). Lists are flattened, so B items with N crops each give a
batch of B*N. For each ``Image`` entry ``k`` the batch holds

* ``batch[k]``: the stacked data, ``(B*N, C, *spatial)``,
* ``batch[k + "_affine"]``: ``(B*N, 4, 4)`` float64 affines,
* ``batch[k + "_meta"]`` and ``batch[k + "_ops"]``: lists of the meta dicts and op lists.

Tensors are stacked, bools/ints/floats become bool/int64/float64 tensors, other values become lists;
label-index side entries (``<key>_indices``) are dropped. ``None`` samples (items skipped with ``on_error="skip"``) are
dropped. A bare ``Image`` sample is treated as ``{"image": img}``. ``decollate`` inverts it.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from medcore.io import Image
from medcore.transforms.crop_pad import LabelIndices

SUFFIXES = ("_affine", "_meta", "_ops")


def flatten_samples(batch: list[Any]) -> list[dict]:
    """Flatten multi-sample items and drop ``None``; bare Images become ``{"image": img}``."""
    out: list[dict] = []
    for s in batch:
        if s is None:
            continue
        if isinstance(s, list | tuple):
            out.extend(flatten_samples(list(s)))
        elif isinstance(s, Image):
            out.append({"image": s})
        elif isinstance(s, dict):
            out.append(s)
        else:
            raise TypeError(f"collate: a sample must be a dict, an Image or a list of them, got {type(s).__name__}")
    return out


def _stack(key: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise ValueError(f"collate: entry {key!r} has different shapes in one batch {sorted(shapes)}; crop or pad "
                         f"to a fixed size (e.g. SpatialPad / RandSpatialCrop) or use batch_size=1")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise ValueError(f"collate: entry {key!r} mixes dtypes {sorted(map(str, dtypes))} in one batch; cast them "
                         f"to one dtype in the transform pipeline")
    return torch.stack(tensors)


def collate(batch: list[Any]) -> dict[str, Any]:
    """Collate a list of samples (see the module docstring)."""
    samples = flatten_samples(batch)
    if not samples:
        return {}
    keys = list(samples[0])
    for i, s in enumerate(samples[1:], 1):
        if set(s) != set(keys):
            raise ValueError(f"collate: sample {i} has keys {sorted(s)} but sample 0 has {sorted(keys)}")
    out: dict[str, Any] = {}
    for k in keys:
        values = [s[k] for s in samples]
        first = values[0]
        if isinstance(first, LabelIndices):
            continue
        if isinstance(first, Image):
            if not all(isinstance(v, Image) for v in values):
                raise ValueError(f"collate: entry {k!r} is an Image in some samples and not in others")
            out[k] = _stack(k, [v.data for v in values])
            out[k + "_affine"] = torch.stack([v.affine for v in values])
            out[k + "_meta"] = [v.meta for v in values]
            out[k + "_ops"] = [v.ops for v in values]
        elif isinstance(first, torch.Tensor):
            out[k] = _stack(k, values)
        elif all(isinstance(v, bool) for v in values):
            out[k] = torch.tensor(values, dtype=torch.bool)
        elif all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
            out[k] = torch.tensor(values, dtype=torch.int64)
        elif all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
            out[k] = torch.tensor(values, dtype=torch.float64)
        else:
            out[k] = values
    return out


def decollate(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Split a collated batch back into per-sample dicts, rebuilding ``Image``s (with affine, meta
    and ops) for every key that has ``<key>_affine``. Replace ``batch[k]`` by a prediction first
    to get predictions as Images ready for ``medcore.transforms.invert``."""
    sizes = {len(v) for v in batch.values() if isinstance(v, torch.Tensor | list)}
    if len(sizes) != 1:
        raise ValueError(f"decollate: entries have different batch sizes {sorted(sizes)}")
    n = sizes.pop()
    images = [k for k in batch if f"{k}_affine" in batch]
    skip = {f"{k}{s}" for k in images for s in SUFFIXES}
    out = []
    for i in range(n):
        sample: dict[str, Any] = {}
        for k, v in batch.items():
            if k in skip:
                continue
            if k in images:
                meta = batch.get(f"{k}_meta", [{}] * n)[i]
                ops = batch.get(f"{k}_ops", [[]] * n)[i]
                sample[k] = Image(v[i], batch[f"{k}_affine"][i], dict(meta), list(ops))
            else:
                sample[k] = v[i]
        out.append(sample)
    return out
