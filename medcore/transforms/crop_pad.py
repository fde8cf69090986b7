"""Crop and pad transforms. All resolve to the concrete ``CropPad`` (before/after per side:
positive pads, negative crops), recorded as a ``crop_pad`` op; inversion pads/crops back.

Crops by label (``RandCropByPosNegLabel``, ``RandCropByLabelClasses``) sample crop centres from
foreground/background voxel indices. Those are computed once per sample and kept in the side
entry ``sample[f"{label_key}_indices"]`` (a ``LabelIndices``: int32 indices of the nonzero classes;
background centres are drawn by rejection); it is reused as long as the label's
shape and op count are unchanged, so a cached deterministic prefix ending in
``ForegroundIndices`` precomputes them for every epoch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

import numpy as np
import torch

from medcore.io.image import Image
from medcore.transforms.base import Resolved, Sample, Transform, register
from medcore.transforms.functional import crop_pad as fc
from medcore.transforms.functional.spatial import translation, update_affine
from medcore.transforms.random import coin, integer
from medcore.transforms.spatial import Resample, Size


def _size(v: Size | None, shape: Sequence[int]) -> list[int]:
    """Sizes per axis; an axis given None, <= 0, or not given at all keeps ``shape``'s."""
    d = len(shape)
    vals = [v] * d if v is None or isinstance(v, int | np.integer) else list(v) + [None] * (d - len(v))
    return [n if (s is None or int(s) <= 0) else int(s) for s, n in zip(vals[:d], shape, strict=True)]


def _ints(v: int | tuple[int, ...], d: int) -> list[int]:
    return [int(v)] * d if isinstance(v, int | np.integer) else [int(i) for i in v]


@register
@dataclass(frozen=True)
class CropPad(Transform):
    """Concrete crop/pad: ``before``/``after`` voxels per spatial side (positive pads with
    ``value``/``mode``, negative crops). Every crop and pad transform resolves to this."""

    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()
    mode: str = "constant"
    value: float = 0.0

    def apply(self, img: Image) -> Image:
        data = fc.crop_pad(img.data, self.before, self.after, self.mode, self.value)
        m = translation([-int(b) for b in self.before])
        op = self.op(kind="crop_pad", in_shape=list(img.spatial_shape), out_shape=list(data.shape[1:]))
        return img.with_op(op, data=data, affine=update_affine(img.affine, m))


def as_resample(crop: CropPad, out_shape: Sequence[int]) -> Resample:
    """The crop/pad ``crop`` as an (integer) ``Resample`` onto ``out_shape``: zeros outside the grid."""
    return Resample(matrix=translation([-int(b) for b in crop.before]).tolist(), out_shape=tuple(out_shape),
                    mode="nearest", padding_mode="zeros")


def box_transform(shape: Sequence[int], start: Sequence[int], end: Sequence[int], mode: str = "constant",
                  value: float = 0.0) -> CropPad:
    before, after = fc.bounds_to_sides(shape, start, end)
    return CropPad(before=tuple(before), after=tuple(after), mode=mode, value=value)


@register
@dataclass(frozen=True)
class SpatialCrop(Transform):
    """Crop the box ``[roi_start, roi_end)`` (voxels; clipped to the grid)."""

    roi_start: tuple[int, ...] = ()
    roi_end: tuple[int, ...] = ()

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        shape = ref.spatial_shape
        start = [min(max(int(s), 0), n) for s, n in zip(self.roi_start, shape, strict=True)]
        end = [min(max(int(e), s), n) for e, s, n in zip(self.roi_end, start, shape, strict=True)]
        return box_transform(shape, start, end)


@register
@dataclass(frozen=True)
class SpatialPad(Transform):
    """Pad to at least ``spatial_size`` (symmetric, odd voxel after; ``-1`` keeps an axis)."""

    spatial_size: Size | None = None
    mode: str = "constant"
    value: float = 0.0

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        before, after = fc.symmetric_pad(ref.spatial_shape, _size(self.spatial_size, ref.spatial_shape))
        return CropPad(tuple(before), tuple(after), self.mode, self.value) if any(before + after) else None


@register
@dataclass(frozen=True)
class DivisiblePad(Transform):
    """Pad symmetrically so every spatial size is a multiple of ``k``."""

    k: int | tuple[int, ...] = 16
    mode: str = "constant"
    value: float = 0.0

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        shape = ref.spatial_shape
        ks = _ints(self.k, len(shape))
        target = [int(np.ceil(n / k) * k) if k > 0 else n for n, k in zip(shape, ks, strict=True)]
        before, after = fc.symmetric_pad(shape, target)
        return CropPad(tuple(before), tuple(after), self.mode, self.value) if any(before + after) else None


@register
@dataclass(frozen=True)
class CenterSpatialCrop(Transform):
    """Crop a centred box of ``roi_size`` (an axis smaller than the box is kept whole)."""

    roi_size: Size | None = None

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        shape = ref.spatial_shape
        start, end = fc.center_box(shape, _size(self.roi_size, shape))
        return box_transform(shape, start, end)


@register
@dataclass(frozen=True)
class CropForeground(Transform):
    """Crop to the bounding box of ``source`` > ``threshold`` (any channel) plus ``margin``.
    ``source`` is a key of the sample (default: the reference image itself). ``k_divisible``
    enlarges the box around its centre to a multiple of k (padding if it leaves the grid).
    A sample with no foreground is left unchanged."""

    source: str | None = None
    threshold: float = 0.0
    margin: int | tuple[int, ...] = 0
    k_divisible: int | tuple[int, ...] = 1

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        src = ref if (self.source is None or sample is None) else sample[self.source]
        box = fc.foreground_box(src.data > self.threshold, self.margin)
        if box is None:
            return None
        start, end = box
        ks = _ints(self.k_divisible, ref.ndim)
        if any(k > 1 for k in ks):
            for i, k in enumerate(ks):
                size = end[i] - start[i]
                new = int(np.ceil(size / k) * k)
                start[i] -= (new - size) // 2
                end[i] = start[i] + new
        return box_transform(ref.spatial_shape, start, end)


# --- label-driven random crops --------------------------------------------------------------
@dataclass
class LabelIndices:
    """Flat voxel indices (int32 where they fit) of every NONZERO class of one label map, valid
    for ``shape`` after ``n_ops`` ops. Background voxels are not stored (they are usually most of
    the volume): they are drawn by rejection against ``label_map`` (see ``pick_background``)."""

    shape: tuple[int, ...]
    n_ops: int
    classes: dict[int, torch.Tensor] = field(default_factory=dict)

    def valid_for(self, label: Image) -> bool:
        return tuple(label.spatial_shape) == tuple(self.shape) and len(label.ops) == self.n_ops

    def foreground(self) -> torch.Tensor:
        parts = [v for c, v in sorted(self.classes.items()) if int(c) != 0]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int32)

    def count(self, c: int) -> int:
        if c != 0:
            v = self.classes.get(c)
            return 0 if v is None else int(v.numel())
        return int(np.prod(self.shape)) - sum(int(v.numel()) for v in self.classes.values())

    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.classes.values())

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """For safetensors caches: ``{"class_<c>": indices, "meta": [n_ops, *shape]}``."""
        out = {f"class_{c}": v.contiguous() for c, v in self.classes.items()}
        out["meta"] = torch.tensor([self.n_ops, *self.shape], dtype=torch.long)
        return out

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> LabelIndices:
        meta = t["meta"].tolist()
        classes = {int(k.split("_", 1)[1]): v for k, v in t.items() if k.startswith("class_")}
        return cls(tuple(meta[1:]), int(meta[0]), classes)


def label_map(label: Image) -> torch.Tensor:
    """Integer class map ``(*spatial)`` from a one-channel label or a one-hot/probability stack."""
    data = label.data
    if data.shape[0] > 1:
        return data.argmax(0)
    x = data[0]
    return x.round().long() if x.is_floating_point() else x


def compute_label_indices(label: Image) -> LabelIndices:
    """Flat indices of every nonzero class in ``label`` (one scan plus a sort of the foreground)."""
    lm = label_map(label)
    flat = lm.reshape(-1)
    fg = torch.nonzero(flat).flatten()
    small = flat.numel() < 2**31
    classes: dict[int, torch.Tensor] = {}
    if fg.numel():
        vals = flat[fg]
        vmin, vmax = int(vals.min()), int(vals.max())
        if vmin == vmax:
            classes[vmin] = fg
        else:
            order = torch.argsort(vals, stable=True)
            uniq, counts = torch.unique_consecutive(vals[order], return_counts=True)
            for v, part in zip(uniq.tolist(), torch.split(fg[order], counts.tolist()), strict=True):
                classes[int(v)] = part
    if small:
        classes = {c: v.to(torch.int32) for c, v in classes.items()}
    return LabelIndices(tuple(label.spatial_shape), len(label.ops), classes)


def label_indices(sample: Sample | None, label: Image, label_key: str) -> LabelIndices:
    """Cached indices from the sample's side entry when still valid, else computed now."""
    key = f"{label_key}_indices"
    if sample is not None:
        cached = sample.get(key)
        if isinstance(cached, LabelIndices) and cached.valid_for(label):
            return cached
    return compute_label_indices(label)


def pick_background(label: Image, rng: torch.Generator | None, tries: int = 64) -> int | None:
    """A uniformly random background (class 0) voxel: rejection sampling, exact fallback."""
    lm = label_map(label).reshape(-1)
    n = lm.numel()
    cand = torch.randint(0, n, (tries,), generator=rng)
    hits = cand[lm[cand.to(lm.device)].cpu() == 0]
    if hits.numel():
        return int(hits[0])
    bg = torch.nonzero(lm == 0).flatten()
    return int(bg[integer(rng, 0, bg.numel())]) if bg.numel() else None


@register
@dataclass(frozen=True)
class ForegroundIndices(Transform):
    """Deterministic: store ``LabelIndices`` of ``sample[label_key]`` under
    ``sample[f"{label_key}_indices"]``. Put it last in the cached prefix (dict samples only)."""

    label_key: str = "label"

    def __call__(self, x: Any, rng: torch.Generator | None = None) -> Any:
        if isinstance(x, list):
            return [self(i, rng) for i in x]
        if not isinstance(x, dict) or self.label_key not in x:
            raise KeyError(f"ForegroundIndices needs a dict sample with key {self.label_key!r}")
        out = dict(x)
        out[f"{self.label_key}_indices"] = label_indices(x, x[self.label_key], self.label_key)
        return out


def _centre_box(shape: Sequence[int], centre: Sequence[int], roi: Sequence[int]) -> tuple[list[int], list[int]]:
    """Box of size ``roi`` around ``centre``, shifted to lie inside the grid (centred if larger)."""
    start = []
    for n, c, r in zip(shape, centre, roi, strict=True):
        if n >= r:
            start.append(int(min(max(c - r // 2, 0), n - r)))
        else:
            start.append(-((r - n) // 2))
    return start, [s + r for s, r in zip(start, roi, strict=True)]


def _pick(indices: torch.Tensor, rng: torch.Generator | None) -> int:
    return int(indices[integer(rng, 0, indices.numel())])


def _unravel(flat: int, shape: Sequence[int]) -> list[int]:
    return [int(v) for v in np.unravel_index(flat, tuple(shape))]


@register
@dataclass(frozen=True)
class RandSpatialCrop(Transform):
    """Crop ``roi_size`` at a uniformly random position (``random_center=False``: centred)."""

    roi_size: Size | None = None
    random_center: bool = True
    num_samples: int = 1
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        shape = ref.spatial_shape
        roi = _size(self.roi_size, shape)
        out: list[Transform] = []
        for _ in range(self.num_samples):
            if self.random_center:
                start = [integer(rng, 0, max(n - r, 0) + 1) if n >= r else -((r - n) // 2)
                         for n, r in zip(shape, roi, strict=True)]
            else:
                start = [n // 2 - r // 2 for n, r in zip(shape, roi, strict=True)]
            out.append(box_transform(shape, start, [s + r for s, r in zip(start, roi, strict=True)]))
        return out if self.num_samples > 1 else out[0]


def _crop_context(ref: Image, sample: Sample | None, label_key: str,
                  spatial_size: Size | None) -> tuple[Image, tuple[int, ...], list[int], LabelIndices]:
    """The label that drives a label-guided crop (``sample[label_key]``, else ``ref`` itself), its
    spatial shape, the crop size and its cached class indices."""
    label = sample[label_key] if sample is not None and label_key in sample else ref
    shape = label.spatial_shape
    return label, shape, _size(spatial_size, shape), label_indices(sample, label, label_key)


@register
@dataclass(frozen=True)
class RandCropByPosNegLabel(Transform):
    """``num_samples`` crops of ``spatial_size``, each centred on a foreground voxel of
    ``sample[label_key]`` with probability pos/(pos+neg), else on a background voxel. Returns a
    list when ``num_samples > 1``. Called on a bare Image, the image itself is the label."""

    spatial_size: Size | None = (96, 96, 96)
    label_key: str = "label"
    pos: float = 1.0
    neg: float = 1.0
    num_samples: int = 1
    fuse: bool = False
    is_random: ClassVar[bool] = True

    @property
    def fusable(self) -> bool:  # type: ignore[override]
        """With ``fuse`` (one sample), the crop resolves to a ``Resample`` (a translation onto the
        patch grid) that ``Compose`` fuses with the spatial transforms after it: a rotation or
        scaling then samples the whole volume about the patch centre, with one interpolation."""
        return self.fuse and self.num_samples == 1

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        label, shape, roi, idx = _crop_context(ref, sample, self.label_key, self.spatial_size)
        fg = idx.foreground()
        has_bg = idx.count(0) > 0
        p_pos = self.pos / (self.pos + self.neg) if (self.pos + self.neg) > 0 else 0.0
        out: list[Transform] = []
        for _ in range(self.num_samples):
            use_fg = coin(rng, p_pos)
            flat: int | None
            if (use_fg and fg.numel()) or (fg.numel() and not has_bg):
                flat = _pick(fg, rng)
            else:
                flat = pick_background(label, rng) if has_bg else None
            centre = _unravel(flat, shape) if flat is not None else [n // 2 for n in shape]
            start, end = _centre_box(shape, centre, roi)
            out.append(box_transform(shape, start, end))
        if self.fusable:
            return as_resample(cast(CropPad, out[0]), roi)
        return out if self.num_samples > 1 else out[0]


@register
@dataclass(frozen=True)
class RandCropByLabelClasses(Transform):
    """``num_samples`` crops of ``spatial_size`` centred on a voxel of a class drawn with
    probabilities ``ratios`` (default: equal over ``num_classes``; absent classes are skipped)."""

    spatial_size: Size | None = (96, 96, 96)
    label_key: str = "label"
    num_classes: int = 2
    ratios: tuple[float, ...] | None = None
    num_samples: int = 1
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        label, shape, roi, idx = _crop_context(ref, sample, self.label_key, self.spatial_size)
        ratios = [1.0] * self.num_classes if self.ratios is None else [float(r) for r in self.ratios]
        weights = torch.tensor([r if idx.count(c) else 0.0 for c, r in enumerate(ratios)], dtype=torch.float64)
        if weights.sum() <= 0:
            raise ValueError(f"RandCropByLabelClasses: label {self.label_key!r} has none of classes "
                             f"0..{self.num_classes - 1} with a positive ratio; check num_classes/ratios")
        out: list[Transform] = []
        for _ in range(self.num_samples):
            c = int(torch.multinomial(weights, 1, generator=rng))
            flat = pick_background(label, rng) if c == 0 else _pick(idx.classes[c], rng)
            centre = _unravel(flat, shape) if flat is not None else [n // 2 for n in shape]
            start, end = _centre_box(shape, centre, roi)
            out.append(box_transform(shape, start, end))
        return out if self.num_samples > 1 else out[0]
