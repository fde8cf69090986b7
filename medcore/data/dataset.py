"""``Dataset``: items (dicts of file paths and other values) -> loaded, transformed samples.

Randomness is explicit (ARCHITECTURE rule 6): sample ``index`` of epoch ``epoch`` is made with
``rng = make_rng(seed, epoch, index)``, so the draw depends on nothing else (not the worker, not
the order). The pipeline is always run as ``rest(prefix(sample), rng)`` where ``(prefix, rest)
= split_transform(transform)``, so a plain ``Dataset`` and the caching datasets give bit-identical
samples (``Compose`` fuses spatial steps, and fusion never crosses the cache boundary).

Keys accepted by ``__getitem__``: an ``int`` index (epoch from ``set_epoch``), ``(epoch, index)``
(what ``medcore.data.loader`` samplers yield, so the epoch reaches persistent workers) or the
engine's ``(epoch, position, index)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from medcore.data.volume import load_volume
from medcore.io import Image
from medcore.transforms import make_rng

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")

Transform = Callable[..., Any]


class ItemError(RuntimeError):
    """An item could not be loaded or preprocessed; the message names the item, key and file."""


def is_image_value(value: Any) -> bool:
    """True for a path (str / PathLike) to an image file or a DICOM series folder."""
    if not isinstance(value, str | os.PathLike):
        return False
    name = os.fspath(value)
    return name.lower().endswith(IMAGE_SUFFIXES) or os.path.isdir(name)


def image_keys_of(item: dict, image_keys: Sequence[str] | None) -> tuple[str, ...]:
    """The keys of ``item`` to load as images: ``image_keys`` if given, else every path value."""
    if image_keys is not None:
        missing = [k for k in image_keys if k not in item]
        if missing:
            raise KeyError(f"item has no key(s) {missing} (present: {sorted(item)}); fix the datalist or image_keys")
        return tuple(image_keys)
    return tuple(k for k, v in item.items() if is_image_value(v))


def load_item(item: dict | Image, image_keys: Sequence[str] | None = None) -> Any:
    """Load the image paths of ``item`` into ``Image``s; other values pass through unchanged."""
    if isinstance(item, Image):
        return item
    if not isinstance(item, dict):
        raise TypeError(f"a dataset item must be a dict of paths (and other values), got {type(item).__name__}")
    out = dict(item)
    for k in image_keys_of(item, image_keys):
        v = item[k]
        if isinstance(v, Image):
            continue
        try:
            out[k] = load_volume(v)
        except Exception as exc:
            raise ItemError(f"key {k!r}: cannot load {os.fspath(v)} ({exc})") from exc
    return out


def split_transform(transform: Transform | None) -> tuple[Transform | None, Transform | None]:
    """``(prefix, rest)``: the cacheable deterministic prefix and the random rest (either may be None)."""
    if transform is None:
        return None, None
    if hasattr(transform, "split_deterministic"):
        prefix, rest = transform.split_deterministic()
        return (prefix if len(prefix) else None), (rest if len(rest) else None)
    if getattr(transform, "is_random", True):
        return None, transform
    return transform, None


def parse_key(key: Any, default_epoch: int) -> tuple[int, int]:
    """``(epoch, index)`` from an int, an ``(epoch, index)`` or an ``(epoch, position, index)`` key."""
    if isinstance(key, tuple | list):
        if len(key) == 2:
            return int(key[0]), int(key[1])
        if len(key) == 3:
            return int(key[0]), int(key[2])
        raise KeyError(f"dataset key must be index, (epoch, index) or (epoch, position, index); got {key!r}")
    return int(default_epoch), int(key)


def describe_item(item: Any) -> str:
    """Short description naming the item's files (for error messages)."""
    if isinstance(item, dict):
        files = [os.fspath(v) for v in item.values() if is_image_value(v)]
        if files:
            return ", ".join(files)
    return type(item).__name__


class Dataset(torch.utils.data.Dataset):
    """Load ``items[index]`` and apply ``transform`` with ``rng = make_rng(seed, epoch, index)``.

    ``image_keys`` names the keys holding image paths (default: every value that looks like an
    image path). With ``on_error="skip"`` a bad item is logged and returned as ``None`` (which
    ``medcore.data.collate`` drops) instead of raising, so one bad file never takes down a batch.
    """

    #: samplers of ``medcore.data.loader`` may pass ``(epoch, index)`` keys
    epoch_keys = True

    def __init__(self, items: Sequence[Any], transform: Transform | None = None, seed: int = 0,
                 image_keys: Sequence[str] | None = None, on_error: str = "raise") -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.items = list(items)
        self.transform = transform
        self.prefix, self.rest = split_transform(transform)
        self.seed = int(seed)
        self.image_keys = tuple(image_keys) if image_keys is not None else None
        self.on_error = on_error
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for integer keys (the loader's ``(epoch, index)`` keys carry their own)."""
        self.epoch = int(epoch)

    # --- the two stages --------------------------------------------------------------------
    def build(self, index: int) -> Any:
        """Load item ``index`` and run the deterministic prefix (what the caches store)."""
        item = self.items[index]
        try:
            sample = load_item(item, self.image_keys)
            return self.prefix(sample) if self.prefix is not None else sample
        except Exception as exc:
            raise ItemError(f"item {index} ({describe_item(item)}): {exc}") from exc

    def prepared(self, index: int) -> Any:
        """The sample after the deterministic prefix (overridden by the caches)."""
        return self.build(index)

    def augment(self, sample: Any, epoch: int, index: int) -> Any:
        """Run the random rest of the pipeline with the (seed, epoch, index) generator."""
        if self.rest is None:
            return sample
        return self.rest(sample, make_rng(self.seed, epoch, index))

    def __getitem__(self, key: Any) -> Any:
        epoch, index = parse_key(key, self.epoch)
        if not -len(self.items) <= index < len(self.items):
            raise IndexError(f"index {index} out of range for a dataset of {len(self.items)} items")
        index %= len(self.items)
        try:
            sample = self.prepared(index)
            if sample is None:
                return None
            try:
                return self.augment(sample, epoch, index)
            except Exception as exc:
                raise ItemError(f"item {index} ({describe_item(self.items[index])}): random transforms "
                                f"failed at epoch {epoch}: {exc}") from exc
        except ItemError as exc:
            if self.on_error == "skip":
                log.warning("skipping %s", exc)
                return None
            raise
