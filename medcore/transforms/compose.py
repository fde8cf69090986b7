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

from typing import Any, ClassVar

import numpy as np
import torch

from medcore.io.image import Image
from medcore.transforms.base import Keyed, Transform, _jsonable, drop_stale_side_entries, new_rng, register
from medcore.transforms.functional import spatial as fs
from medcore.transforms.functional.crop_pad import compact
from medcore.transforms.spatial import Resample


def _is_integer_map(m: np.ndarray) -> bool:
    return bool(np.all(np.abs(m - np.round(m)) < 1e-9))


def _as_keyed(step: Transform, x: Any) -> Keyed:
    if isinstance(step, Keyed):
        return step
    keys = tuple(k for k, v in x.items() if isinstance(v, Image))
    return Keyed(step, keys=keys)


@register
class Compose(Transform):
    """Run ``transforms`` in order; see the module docstring. ``fuse=False`` disables fusion."""

    nested: ClassVar[tuple[str, ...]] = ("transforms",)

    def __init__(self, transforms: list[Transform] | tuple = (), fuse: bool = True) -> None:
        from medcore.transforms.base import from_config

        self.transforms = [from_config(t) if isinstance(t, dict) else t for t in transforms]
        self.fuse = fuse

    def params(self) -> dict:
        return {"transforms": list(self.transforms), "fuse": self.fuse}

    def config(self) -> dict:  # not cached: ``transforms`` is a mutable list
        return {"name": type(self).__name__, **_jsonable(self.params())}

    @property
    def is_random(self) -> bool:  # type: ignore[override]
        return any(t.is_random for t in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, i):
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

    def inverse(self, x: Any, mode: str | None = None) -> Any:
        """Undo the geometric ops recorded on ``x`` (an Image, dict or list of them)."""
        from medcore.transforms.inverse import invert

        if isinstance(x, list):
            return [self.inverse(i, mode) for i in x]
        if isinstance(x, dict):
            return {k: invert(v, mode=mode) if isinstance(v, Image) else v for k, v in x.items()}
        return invert(x, mode=mode)

    # --- execution ---------------------------------------------------------------------------
    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        if self.is_random and rng is None:
            rng = new_rng()
        return _compact_all(self._run(0, x, rng, _storages(x)))

    def _run(self, i: int, x: Any, rng, frozen: set) -> Any:
        steps = self.transforms
        while i < len(steps):
            if isinstance(x, list):
                return [self._run(i, item, rng, frozen) for item in x]
            j = i
            if self.fuse:
                while j < len(steps) and steps[j].fusable:
                    j += 1
            if j - i >= 2:
                x = self._fused(steps[i:j], x, rng)
                i = j
            elif isinstance(steps[i], Keyed):
                x = steps[i].call_frozen(x, rng, frozen)
                i += 1
            else:
                x = steps[i](x, rng)
                i += 1
        return x

    def _fused(self, steps: list[Transform], x: Any, rng) -> Any:
        if isinstance(x, Image):
            plain = [s.transform if isinstance(s, Keyed) else s for s in steps]
            out = self._fused_images(steps, {"_": x}, ("_",), [Keyed(s, keys=("_",)) for s in plain], rng)
            return out["_"] if out is not None else self._sequential(steps, x, rng)
        if not isinstance(x, dict):
            raise TypeError(f"Compose expects an Image, a dict or a list, got {type(x).__name__}")
        keyed = [_as_keyed(s, x) for s in steps]
        keys = tuple(k for k in keyed[0].keys if k in x)
        same = all(tuple(k for k in kd.keys if k in x) == keys for kd in keyed)
        if not same or not keys:
            return self._sequential(steps, x, rng)
        out = self._fused_images(steps, x, keys, keyed, rng)
        return out if out is not None else self._sequential(steps, x, rng)

    @staticmethod
    def _sequential(steps, x, rng):
        for s in steps:
            x = s(x, rng)
        return x

    def _fused_images(self, steps, x: dict, keys: tuple[str, ...], keyed: list[Keyed], rng) -> dict | None:
        ref = x[keys[0]]
        shape, affine = ref.spatial_shape, ref.affine
        for k in keys[1:]:
            img = x[k]
            if img.spatial_shape != shape or not (torch.equal(img.affine, affine)
                                                  or np.allclose(img.affine.numpy(), affine.numpy(), atol=1e-6)):
                return None  # keys on different grids: fall back to step-by-step
        d = len(shape)
        total = np.eye(d + 1)
        parts: list[dict] = []
        modes: dict[str, str | None] = {k: None for k in keys}
        paddings: dict[str, str] = {k: "zeros" for k in keys}
        for kd in keyed:
            proxy = Image(torch.zeros((), dtype=ref.data.dtype).expand(ref.data.shape[0], *shape), affine)
            concrete = kd.transform.resolve(proxy, rng, None)
            if concrete is None:
                continue
            m, out_shape = concrete.plan(shape, affine)
            integer = _is_integer_map(m)
            for k in keys:
                ck = kd.concrete_for(concrete, k)
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


def _storages(x: Any) -> set:
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
class OneOf(Transform):
    """Apply one of ``transforms``, drawn with probabilities proportional to ``weights``."""

    nested: ClassVar[tuple[str, ...]] = ("transforms",)
    is_random: ClassVar[bool] = True

    def __init__(self, transforms: list[Transform] | tuple = (), weights: list[float] | None = None) -> None:
        from medcore.transforms.base import from_config

        self.transforms = [from_config(t) if isinstance(t, dict) else t for t in transforms]
        if not self.transforms:
            raise ValueError("OneOf needs at least one transform")
        self.weights = [1.0] * len(self.transforms) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(self.transforms) or sum(self.weights) <= 0:
            raise ValueError(f"OneOf: need one non-negative weight per transform, got {self.weights}")

    def params(self) -> dict:
        return {"transforms": list(self.transforms), "weights": self.weights}

    def config(self) -> dict:
        return {"name": type(self).__name__, **_jsonable(self.params())}

    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        rng = new_rng() if rng is None else rng
        i = int(torch.multinomial(torch.tensor(self.weights, dtype=torch.float64), 1, generator=rng))
        return self.transforms[i](x, rng)


@register
class RandomOrder(Transform):
    """Apply all ``transforms`` in a random order."""

    nested: ClassVar[tuple[str, ...]] = ("transforms",)
    is_random: ClassVar[bool] = True

    def __init__(self, transforms: list[Transform] | tuple = ()) -> None:
        from medcore.transforms.base import from_config

        self.transforms = [from_config(t) if isinstance(t, dict) else t for t in transforms]

    def params(self) -> dict:
        return {"transforms": list(self.transforms)}

    def config(self) -> dict:
        return {"name": type(self).__name__, **_jsonable(self.params())}

    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        rng = new_rng() if rng is None else rng
        for i in torch.randperm(len(self.transforms), generator=rng).tolist():
            x = self.transforms[i](x, rng)
        return x
