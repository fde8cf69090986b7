"""Transform base class, the generic dict adapter ``Keyed``, the registry and ``make_rng``.

Every transform is a small dataclass whose fields are its (JSON-able) parameters.

* ``t(x, rng=None)``: ``x`` is an ``Image``, a dict (``Image`` values are transformed, anything
  else passes through) or a list of those (multi-sample output of an earlier crop; mapped).
* Two steps inside: ``resolve(ref, rng, sample)`` turns the transform into a *concrete*,
  deterministic, data-independent transform (a random one draws its parameters from ``rng``;
  ``CropForeground`` computes its box) - or ``None`` (skip) or a list (several samples).
  ``apply(img)`` then runs the concrete transform on one ``Image`` and appends its op. Because
  the concrete transform is resolved once per sample, all keys of a dict get the same draw.
* ``config()`` -> ``{"name": ClassName, **fields}`` (JSON); ``from_config`` rebuilds it.
* ``is_random`` tells ``Compose.split_deterministic`` where the cacheable prefix ends.

Random parameters come only from the explicit ``torch.Generator`` (ARCHITECTURE rule 6); with
``rng=None`` a random transform seeds a fresh generator from the OS (not reproducible, but the
ops it records still replay exactly). Use ``make_rng(seed, epoch, index)`` for reproducibility.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, TypeVar

import torch

from medcore.io.image import Image
from medcore.transforms.random import make_rng, new_rng

__all__ = ["REGISTRY", "Keyed", "Transform", "drop_stale_side_entries", "from_config", "jsonable", "make_rng",
           "new_rng", "register"]

Config = dict[str, Any]

REGISTRY: dict[str, type[Transform]] = {}


TransformType = TypeVar("TransformType", bound="type[Transform]")


def register(cls: TransformType) -> TransformType:
    """Class decorator: make ``cls`` rebuildable by ``from_config``."""
    REGISTRY[cls.__name__] = cls
    return cls


_PLAIN = (int, float, str, bool, type(None))


def jsonable(v: Any) -> Any:
    """``v`` with tuples as lists, tensors as lists and transforms as their configs (JSON-able)."""
    if type(v) in _PLAIN:
        return v
    if isinstance(v, tuple | list):
        return [jsonable(i) for i in v]
    if isinstance(v, dict):
        return {str(k): jsonable(i) for k, i in v.items()}
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Transform):
        return v.config()
    return v


def frozen_value(v: Any) -> Any:
    """``v`` with every list turned into a tuple (recursively): a hashable, immutable field value."""
    if isinstance(v, list | tuple):
        return tuple(frozen_value(i) for i in v)
    return v


def from_config(cfg: Config | list[Config]) -> Transform:
    """Rebuild a transform (a ``Compose`` when given a list) from ``config()`` output."""
    if isinstance(cfg, list):
        cfg = {"name": "Compose", "transforms": cfg}
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"transform config must be a dict with a 'name' field, got {cfg!r}")
    name = cfg["name"]
    cls = REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown transform {name!r} in config; known: {sorted(REGISTRY)}")
    params = {k: v for k, v in cfg.items() if k != "name"}
    return cls.from_params(params)


def transforms_from(items: Iterable[Transform | Config]) -> tuple[Transform, ...]:
    """Transforms given as instances or as configs, as a tuple of instances."""
    return tuple(from_config(t) if isinstance(t, dict) else t for t in items)


class Transform:
    """Base class. Subclasses are ``@register``-ed frozen dataclasses and implement ``apply`` (and,
    when random or data-dependent, ``resolve``). List-valued fields are stored as tuples."""

    is_random: ClassVar[bool] = False
    #: affine-type transforms (a voxel map + a resample) that Compose fuses; see ``spatial.py``.
    fusable: ClassVar[bool] = False
    #: fields holding nested transforms (rebuilt by ``from_params``).
    nested: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, list | tuple):
                object.__setattr__(self, f.name, frozen_value(v))

    # --- config ----------------------------------------------------------------------------
    def params(self) -> Config:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def config(self) -> Config:
        """JSON-able ``{"name": ..., **params}``; ``from_config`` rebuilds an equal transform.
        Computed once per (immutable) instance and shared, since it lands in every op: treat the
        returned dict as read-only; use ``replace`` for a changed transform."""
        cached: Config | None = self.__dict__.get("_config")
        if cached is None:
            cached = {"name": type(self).__name__, **jsonable(self.params())}
            self.__dict__["_config"] = cached
        return cached

    @classmethod
    def from_params(cls, params: Config) -> Transform:
        params = dict(params)
        for key in cls.nested:
            if key in params:
                v = params[key]
                params[key] = transforms_from(v) if isinstance(v, list) else from_config(v)
        return cls(**params)

    def replace(self, **changes: Any) -> Transform:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    # --- execution -------------------------------------------------------------------------
    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        """Return the concrete deterministic transform(s) for this sample (default: ``self``)."""
        return self

    def apply(self, img: Image) -> Image:
        """Run this concrete transform on one ``Image`` and record its op."""
        raise NotImplementedError(f"{type(self).__name__}.apply")

    def apply_owned(self, img: Image) -> Image:
        """``apply`` when ``img.data`` belongs to the running pipeline and may be modified in
        place (Compose decides); default: plain ``apply``."""
        return self.apply(img)

    def op(self, **extra: Any) -> Config:
        """The op dict recorded in ``Image.ops``: name, kind, transform config and ``extra``."""
        return {"name": type(self).__name__, "kind": extra.pop("kind", "other"), "transform": self.config(), **extra}

    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        if isinstance(x, list):
            return [self(item, rng) for item in x]
        if isinstance(x, dict):
            keys = tuple(k for k, v in x.items() if isinstance(v, Image))
            return Keyed(self, keys=keys)(x, rng)
        if not isinstance(x, Image):
            raise TypeError(f"{type(self).__name__} expects an Image, a dict of Images or a list; got "
                            f"{type(x).__name__} - wrap arrays with medcore.io.Image(data, affine)")
        if self.is_random and rng is None:
            rng = new_rng()
        concrete = self.resolve(x, rng, None)
        if concrete is None:
            return x
        if isinstance(concrete, list):
            return [c.apply(x) for c in concrete]
        return concrete.apply(x)


#: a dict sample: ``Image`` entries plus anything else (ids, cached label indices), passed along.
Sample = dict[str, Any]
#: what ``resolve`` returns: the concrete transform, several (one per sample), or None (skip).
Resolved = Transform | list[Transform] | None


def _overrides_for(overrides: Config, keys: tuple[str, ...]) -> dict[str, Config]:
    per_key: dict[str, Config] = {k: {} for k in keys}
    for param, value in overrides.items():
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in per_key:
                    raise ValueError(f"override {param!r} names key {k!r}, which is not in keys {keys}")
                per_key[k][param] = v
        elif isinstance(value, tuple | list) and len(value) == len(keys) and not isinstance(value, str):
            for k, v in zip(keys, value, strict=True):
                per_key[k][param] = v
        else:
            for k in keys:
                per_key[k][param] = value
    return per_key


@register
@dataclasses.dataclass(frozen=True, init=False, eq=False)
class Keyed(Transform):
    """Apply ``transform`` to the ``Image`` entries ``keys`` of a dict with ONE draw per sample.

    Per-key parameter overrides are keyword arguments, either one value per key (a tuple/list in
    ``keys`` order) or a ``{key: value}`` dict, e.g. ``Keyed(Spacing(pixdim=(1, 1, 1)),
    keys=("image", "label"), mode=("bilinear", "nearest"))``. Overrides apply to the concrete
    transform (a ``RandAffine`` resolves to an ``Affine``, whose ``mode`` is overridden).
    The first key is the reference image for drawing parameters. Missing keys raise unless
    ``allow_missing``; non-Image entries pass through untouched.
    """

    transform: Transform
    keys: tuple[str, ...]
    allow_missing: bool
    overrides: Config

    nested: ClassVar[tuple[str, ...]] = ("transform",)

    def __init__(self, transform: Transform | Config, keys: Sequence[str] | str = ("image", "label"),
                 allow_missing: bool = False, **overrides: Any) -> None:
        if isinstance(keys, str):
            keys = (keys,)
        object.__setattr__(self, "transform", from_config(transform) if isinstance(transform, dict) else transform)
        object.__setattr__(self, "keys", tuple(keys))
        object.__setattr__(self, "allow_missing", allow_missing)
        object.__setattr__(self, "overrides", dict(overrides.pop("overrides", {}), **overrides))
        object.__setattr__(self, "_per_key", _overrides_for(self.overrides, self.keys))

    @property
    def is_random(self) -> bool:  # type: ignore[override]
        return self.transform.is_random

    @property
    def fusable(self) -> bool:  # type: ignore[override]
        return self.transform.fusable

    @classmethod
    def from_params(cls, params: Config) -> Keyed:
        params = dict(params)
        overrides = params.pop("overrides", {})
        return cls(from_config(params.pop("transform")), **params, **overrides)

    def replace(self, **changes: Any) -> Keyed:
        p = self.params()
        p.update(changes)
        overrides = p.pop("overrides")
        return Keyed(p.pop("transform"), **p, **overrides)

    def present_keys(self, x: Sample) -> tuple[str, ...]:
        keys = tuple(k for k in self.keys if k in x)
        bad = [k for k in keys if not isinstance(x[k], Image)]
        if bad:
            raise TypeError(f"{type(self.transform).__name__}: sample key(s) {bad} hold "
                            f"{[type(x[k]).__name__ for k in bad]}, not Images; load them first or drop them from keys")
        if len(keys) != len(self.keys) and not self.allow_missing:
            missing = [k for k in self.keys if k not in x]
            raise KeyError(f"{type(self.transform).__name__}: sample has no key(s) {missing}; present: "
                           f"{sorted(x)} - fix the keys or pass allow_missing=True")
        return keys

    def concrete_for(self, concrete: Transform, key: str) -> Transform:
        over: Config | None = self.__dict__["_per_key"].get(key)
        if not over:
            return concrete
        names = {f.name for f in dataclasses.fields(concrete)} if dataclasses.is_dataclass(concrete) else set[str]()
        usable = {k: v for k, v in over.items() if k in names}
        return concrete.replace(**usable) if usable else concrete

    def resolve_sample(self, x: Sample, rng: torch.Generator | None) -> tuple[Resolved, tuple[str, ...]]:
        keys = self.present_keys(x)
        if not keys:
            return None, keys
        if self.transform.is_random and rng is None:
            rng = new_rng()
        return self.transform.resolve(x[keys[0]], rng, x), keys

    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        return self.call_frozen(x, rng, None)

    def call_frozen(self, x: Any, rng: torch.Generator | None, frozen: set[int] | None) -> Any:
        """``__call__``; tensors whose storage is not in ``frozen`` may be modified in place."""
        if isinstance(x, list):
            return [self.call_frozen(item, rng, frozen) for item in x]
        if isinstance(x, Image):
            return self.transform(x, rng)
        if not isinstance(x, dict):
            raise TypeError(f"Keyed expects a dict of Images (or a list of them), got {type(x).__name__}")
        concrete, keys = self.resolve_sample(x, rng)
        if concrete is None:
            return x
        if isinstance(concrete, list):
            return [self.apply_all(c, x, keys, frozen) for c in concrete]
        return self.apply_all(concrete, x, keys, frozen)

    def apply_all(self, concrete: Transform, x: Sample, keys: tuple[str, ...],
                  frozen: set[int] | None = None) -> Sample:
        """Apply the concrete transform (with each key's overrides) to the ``keys`` of ``x``."""
        out = dict(x)
        for k in keys:
            t = self.concrete_for(concrete, k)
            img = x[k]
            if frozen is not None and img.data.untyped_storage().data_ptr() not in frozen:
                out[k] = t.apply_owned(img)
            else:
                out[k] = t.apply(img)
        drop_stale_side_entries(out)
        return out

    def __repr__(self) -> str:
        return f"Keyed({self.transform!r}, keys={self.keys}, overrides={self.overrides})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyed) and self.config() == other.config()


def drop_stale_side_entries(sample: Sample) -> None:
    """Remove cached label indices (``<key>_indices``) that no longer match their label."""
    for name in [k for k, v in sample.items() if hasattr(v, "valid_for")]:
        label = sample.get(name[: -len("_indices")]) if name.endswith("_indices") else None
        if not isinstance(label, Image) or not sample[name].valid_for(label):
            del sample[name]
