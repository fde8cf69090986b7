"""Composition: ``Compose`` (with spatial fusion), ``OneOf``, ``RandomOrder``.

``Compose`` runs its steps in order and maps the remaining steps over the list returned by a
multi-sample step. A run of two or more consecutive affine-type steps (``fusable``) is executed
as ONE resample per image: each step is resolved (random draws included, in the same order as
unfused execution) against the geometry left by the previous ones, the voxel maps are multiplied,
and every image is resampled once. The recorded op is a single ``Resample`` holding the fused map
(``fused`` lists the configs of its parts). Per key, the interpolation mode is ``nearest`` if any
non-integer part asks for it (labels), else the parts' linear mode; integer-only runs (flips,
rot90, orientation) are exact gathers.

Crops inside a chain are views (no copy); ``Compose`` hands back every Image in its own compact
storage, so a cached prefix output never pins its uncropped source in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, overload

import numpy as np
import torch

from medcore.io.image import Image
from medcore.transforms.base import (
    Config,
    Keyed,
    Sample,
    Transform,
    drop_stale_side_entries,
    new_rng,
    register,
    transforms_from,
)
from medcore.transforms.functional import spatial as fs
from medcore.transforms.functional.crop_pad import compact
from medcore.transforms.spatial import Resample, SpatialTransform


def _is_integer_map(m: np.ndarray) -> bool:
    return bool(np.all(np.abs(m - np.round(m)) < 1e-9))


def _as_keyed(step: Transform, x: Sample) -> Keyed:
    if isinstance(step, Keyed):
        return step
    keys = tuple(k for k, v in x.items() if isinstance(v, Image))
    return Keyed(step, keys=keys)


@register
@dataclass(frozen=True, init=False, eq=False)
class Compose(Transform):
    """Run ``transforms`` in order; see the module docstring. ``fuse=False`` disables fusion."""

    transforms: tuple[Transform, ...]
    fuse: bool

    nested: ClassVar[tuple[str, ...]] = ("transforms",)

    def __init__(self, transforms: Sequence[Transform | Config] = (), fuse: bool = True) -> None:
        object.__setattr__(self, "transforms", transforms_from(transforms))
        object.__setattr__(self, "fuse", fuse)

    @property
    def is_random(self) -> bool:  # type: ignore[override]
        return any(t.is_random for t in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    @overload
    def __getitem__(self, i: int) -> Transform: ...

    @overload
    def __getitem__(self, i: slice) -> Compose: ...

    def __getitem__(self, i: int | slice) -> Transform | Compose:
        return Compose(self.transforms[i], self.fuse) if isinstance(i, slice) else self.transforms[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Compose) and self.config() == other.config()

    def __repr__(self) -> str:
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"

    def split_deterministic(self) -> tuple[Compose, Compose]:
        """``(prefix, rest)``: prefix = longest leading run of non-random steps (cacheable)."""
        n = 0
        while n < len(self.transforms) and not self.transforms[n].is_random:
            n += 1
        return Compose(self.transforms[:n], self.fuse), Compose(self.transforms[n:], self.fuse)

    # --- execution ---------------------------------------------------------------------------
    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        if self.is_random and rng is None:
            rng = new_rng()
        return _compact_all(self._run(0, x, rng, _storages(x)))

    def _run(self, i: int, x: Any, rng: torch.Generator | None, frozen: set[int]) -> Any:
        steps = self.transforms
        while i < len(steps):
            if isinstance(x, list):
                return [self._run(i, item, rng, frozen) for item in x]
            j = i
            if self.fuse:
                while j < len(steps) and steps[j].fusable:
                    j += 1
            step = steps[i]
            if j - i >= 2:
                x = self._fused(steps[i:j], x, rng)
                i = j
            elif isinstance(step, Keyed):
                x = step.call_frozen(x, rng, frozen)
                i += 1
            else:
                x = step(x, rng)
                i += 1
        return x

    def _fused(self, steps: Sequence[Transform], x: Any, rng: torch.Generator | None) -> Any:
        if isinstance(x, Image):
            plain = [s.transform if isinstance(s, Keyed) else s for s in steps]
            out = _fused_images({"_": x}, ("_",), [Keyed(s, keys=("_",)) for s in plain], rng)
            return out["_"] if out is not None else _sequential(steps, x, rng)
        if not isinstance(x, dict):
            raise TypeError(f"Compose expects an Image, a dict or a list, got {type(x).__name__}")
        keyed = [_as_keyed(s, x) for s in steps]
        keys = tuple(k for k in keyed[0].keys if k in x)
        same = all(tuple(k for k in kd.keys if k in x) == keys for kd in keyed)
        if not same or not keys:
            return _sequential(steps, x, rng)
        out = _fused_images(x, keys, keyed, rng)
        return out if out is not None else _sequential(steps, x, rng)


def _sequential(steps: Sequence[Transform], x: Any, rng: torch.Generator | None) -> Any:
    for s in steps:
        x = s(x, rng)
    return x


def _spatial(t: Transform) -> SpatialTransform:
    if not isinstance(t, SpatialTransform):
        raise TypeError(f"Compose: a fusable step resolved to {type(t).__name__}, which is not a spatial transform")
    return t


def _fused_images(x: Sample, keys: tuple[str, ...], keyed: list[Keyed], rng: torch.Generator | None) -> Sample | None:
    ref = x[keys[0]]
    shape, affine = ref.spatial_shape, ref.affine
    for k in keys[1:]:
        img = x[k]
        if img.spatial_shape != shape or not (torch.equal(img.affine, affine)
                                              or np.allclose(img.affine.numpy(), affine.numpy(), atol=1e-6)):
            return None  # keys on different grids: fall back to step-by-step
    d = len(shape)
    total = np.eye(d + 1)
    parts: list[Config] = []
    modes: dict[str, str | None] = {k: None for k in keys}
    paddings: dict[str, str] = {k: "zeros" for k in keys}
    for kd in keyed:
        proxy = Image(torch.zeros((), dtype=ref.data.dtype).expand(ref.data.shape[0], *shape), affine)
        # the sample (label-driven crops read it) only while the geometry is still the input's
        resolved = kd.transform.resolve(proxy, rng, None if parts else x)
        if resolved is None:
            continue
        if isinstance(resolved, list):
            raise TypeError(f"Compose: fusable step {type(kd.transform).__name__} resolved to several samples")
        concrete = _spatial(resolved)
        m, out_shape = concrete.plan(shape, affine)
        integer = _is_integer_map(m)
        for k in keys:
            ck = _spatial(kd.concrete_for(concrete, k))
            paddings[k] = ck.padding_mode
            if not integer:
                modes[k] = "nearest" if (ck.mode == "nearest" or modes[k] == "nearest") else ck.mode
        total = total @ m
        affine = fs.update_affine(affine, m)
        shape = tuple(out_shape)
        parts.append(concrete.config())
    out = dict(x)
    if not parts:
        return out
    for k in keys:
        img = x[k]
        mode = modes[k] or "nearest"
        rs = Resample(matrix=total.tolist(), out_shape=list(shape), mode=mode, padding_mode=paddings[k])
        data = fs.resample(img.data, total, shape, mode, paddings[k])
        op = rs.op(kind="affine", matrix=total.tolist(), in_shape=list(img.spatial_shape),
                   out_shape=list(shape), fused=parts)
        out[k] = img.with_op(op, data=data, affine=fs.update_affine(img.affine, total))
    drop_stale_side_entries(out)
    return out


def _storages(x: Any) -> set[int]:
    """Storage addresses of the caller's tensors: never modified in place."""
    if isinstance(x, list):
        return set().union(*[_storages(i) for i in x]) if x else set()
    if isinstance(x, Image):
        return {x.data.untyped_storage().data_ptr()}
    if isinstance(x, dict):
        return {v.data.untyped_storage().data_ptr() for v in x.values() if isinstance(v, Image)}
    return set()


def _compact_all(x: Any) -> Any:
    """Give every output Image its own compact storage (crops inside the chain are views)."""
    if isinstance(x, list):
        return [_compact_all(i) for i in x]
    if isinstance(x, Image):
        data = compact(x.data)
        return x if data is x.data else x.replace(data=data)
    if isinstance(x, dict):
        return {k: _compact_all(v) if isinstance(v, Image) else v for k, v in x.items()}
    return x


@register
@dataclass(frozen=True, init=False, eq=False)
class OneOf(Transform):
    """Apply one of ``transforms``, drawn with probabilities proportional to ``weights``."""

    transforms: tuple[Transform, ...]
    weights: tuple[float, ...]

    nested: ClassVar[tuple[str, ...]] = ("transforms",)
    is_random: ClassVar[bool] = True

    def __init__(self, transforms: Sequence[Transform | Config] = (), weights: Sequence[float] | None = None) -> None:
        ts = transforms_from(transforms)
        if not ts:
            raise ValueError("OneOf needs at least one transform")
        ws = (1.0,) * len(ts) if weights is None else tuple(float(w) for w in weights)
        if len(ws) != len(ts) or sum(ws) <= 0:
            raise ValueError(f"OneOf: need one non-negative weight per transform, got {list(ws)}")
        object.__setattr__(self, "transforms", ts)
        object.__setattr__(self, "weights", ws)

    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        rng = new_rng() if rng is None else rng
        i = int(torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), 1, generator=rng))
        return self.transforms[i](x, rng)


@register
@dataclass(frozen=True, init=False, eq=False)
class RandomOrder(Transform):
    """Apply all ``transforms`` in a random order."""

    transforms: tuple[Transform, ...]

    nested: ClassVar[tuple[str, ...]] = ("transforms",)
    is_random: ClassVar[bool] = True

    def __init__(self, transforms: Sequence[Transform | Config] = ()) -> None:
        object.__setattr__(self, "transforms", transforms_from(transforms))

    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        rng = new_rng() if rng is None else rng
        for i in torch.randperm(len(self.transforms), generator=rng).tolist():
            x = self.transforms[i](x, rng)
        return x
