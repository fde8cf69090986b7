"""Spatial transforms. Each is a voxel map (see ``functional/spatial.py``) plus one resample.

Affine-type transforms (``fusable = True``) expose ``plan(shape, affine) -> (map, out_shape)``;
``Compose`` multiplies the maps of consecutive ones and resamples once. Flips, Rotate90 and
Orientation are integer maps and always take the exact gather path. Rotations/zoom/affine work
in voxel space about the grid centre. Interpolation: ``mode`` is ``"bilinear"`` (linear in every
dimension) or ``"nearest"`` (labels); ``padding_mode`` is ``"zeros"`` or ``"border"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import numpy as np
import torch

from medcore.io.image import Image
from medcore.transforms.base import Resolved, Sample, Transform, register
from medcore.transforms.functional import spatial as fs
from medcore.transforms.random import AxisRanges, axis_ranges, coin, integer, seed, uniform

T = TypeVar("T")
#: a size per spatial axis (one for all, or one per axis); None or <= 0 keeps an axis.
Size = int | tuple[int | None, ...]


def per_axis(v: T | Sequence[T | None] | None, d: int) -> tuple[T | None, ...]:
    """``d`` values from one value for every axis or a sequence (its last value repeats)."""
    if v is None:
        return (None,) * d
    if isinstance(v, str) or not isinstance(v, Iterable):
        return (v,) * d
    vals = tuple(v)
    return vals if len(vals) >= d else vals + (vals[-1],) * (d - len(vals))


def sizes(spatial_size: Size | None, shape: Sequence[int]) -> tuple[int, ...]:
    """The output size per axis: ``spatial_size`` where set and positive, else ``shape``'s."""
    return tuple(n if (s is None or s <= 0) else int(s)
                 for s, n in zip(per_axis(spatial_size, len(shape)), shape, strict=True))


def floats(v: float | Sequence[float | None] | None, d: int, default: float) -> list[float]:
    """``per_axis`` with None as ``default``."""
    return [default if x is None else float(x) for x in per_axis(v, d)]


class SpatialTransform(Transform):
    """An affine-type transform: subclasses implement ``plan``; ``apply`` resamples once."""

    fusable: ClassVar[bool] = True
    mode: str = "bilinear"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        raise NotImplementedError

    def prefilter(self, img: Image, m: np.ndarray) -> torch.Tensor:
        """Hook for anti-aliasing before the resample (default: none)."""
        return img.data

    def apply(self, img: Image) -> Image:
        m, out_shape = self.plan(img.spatial_shape, img.affine)
        data = fs.resample(self.prefilter(img, m), m, out_shape, self.mode, self.padding_mode)
        op = self.op(kind="affine", matrix=m.tolist(), in_shape=list(img.spatial_shape), out_shape=list(out_shape))
        return img.with_op(op, data=data, affine=fs.update_affine(img.affine, m))


@register
@dataclass(frozen=True)
class Resample(SpatialTransform):
    """Resample through an explicit voxel map ``matrix`` (output voxel -> input voxel) onto
    ``out_shape``. What fused groups and inversions record and replay."""

    matrix: Sequence[Sequence[float]]
    out_shape: Sequence[int]
    mode: str = "bilinear"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.shape != (len(shape) + 1, len(shape) + 1):
            raise ValueError(f"Resample: matrix {m.shape} does not fit a {len(shape)}D image")
        return m, tuple(int(v) for v in self.out_shape)


@register
@dataclass(frozen=True)
class Orientation(SpatialTransform):
    """Reorder/flip voxel axes so they run along ``axcodes`` ("RAS", "LPS", "RA", ...). Exact."""

    axcodes: str = "RAS"
    mode: str = "nearest"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        return fs.orientation_map(affine, shape, self.axcodes)


@register
@dataclass(frozen=True)
class Spacing(SpatialTransform):
    """Resample to voxel size ``pixdim`` mm (``None``/``<=0`` keeps an axis), keeping the axis
    directions. Samples beyond the edge repeat the edge (``padding_mode="border"``, as MONAI).
    ``anti_alias`` blurs downsampled axes first (sigma = (factor - 1) / 2 voxels);
    it is off by default to match MONAI and is skipped for ``nearest``."""

    pixdim: float | tuple[float | None, ...] = (1.0, 1.0, 1.0)
    mode: str = "bilinear"
    padding_mode: str = "border"
    anti_alias: bool = False

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        return fs.spacing_map(affine, shape, per_axis(self.pixdim, len(shape)))

    def prefilter(self, img: Image, m: np.ndarray) -> torch.Tensor:
        if not self.anti_alias or self.mode == "nearest":
            return img.data
        d = img.ndim
        factors = np.linalg.norm(np.asarray(m)[:d, :d], axis=1)  # input voxels per output voxel, per input axis
        sigma = [max((f - 1.0) / 2.0, 0.0) for f in factors]
        return fs.gaussian_smooth(img.data, sigma) if any(s > 0 for s in sigma) else img.data

    @property
    def fusable(self) -> bool:  # type: ignore[override]
        return not self.anti_alias


@register
@dataclass(frozen=True)
class Resize(SpatialTransform):
    """Resample to ``spatial_size`` voxels (``-1``/None keeps an axis), voxel edges on edges
    (like ``F.interpolate(align_corners=False)``). Edges are clamped."""

    spatial_size: Size = (96, 96, 96)
    mode: str = "bilinear"
    padding_mode: str = "border"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        size = sizes(self.spatial_size, shape)
        return fs.resize_map(shape, size), size


@register
@dataclass(frozen=True)
class Flip(SpatialTransform):
    """Reverse the voxel order along ``axes`` (spatial axis numbers, 0-based). Exact."""

    axes: int | tuple[int, ...] = (0,)
    mode: str = "nearest"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        axes = [self.axes] if isinstance(self.axes, int) else list(self.axes)
        return fs.flip_map(shape, axes), tuple(shape)


@register
@dataclass(frozen=True)
class Rotate90(SpatialTransform):
    """Rotate by ``k`` quarter turns in the plane ``axes`` (as ``torch.rot90``). Exact."""

    k: int = 1
    axes: tuple[int, int] = (0, 1)
    mode: str = "nearest"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        return fs.rot90_map(shape, int(self.k), tuple(self.axes))


@register
@dataclass(frozen=True)
class Rotate(SpatialTransform):
    """Rotate by ``angle`` radians about the grid centre (2D: one angle; 3D: about axes 0, 1, 2).
    ``keep_size=False`` enlarges the grid to hold the whole rotated input."""

    angle: float | tuple[float, ...] = 0.0
    keep_size: bool = True
    mode: str = "bilinear"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        r = fs.rotation_matrix(self.angle, len(shape))
        out = tuple(shape) if self.keep_size else fs.bounding_shape(shape, r)
        return fs.centred_affine_map(shape, r, out_shape=out), out


@register
@dataclass(frozen=True)
class Zoom(SpatialTransform):
    """Scale the content by ``zoom`` about the grid centre, keeping the grid (>1 zooms in)."""

    zoom: float | tuple[float, ...] = 1.0
    mode: str = "bilinear"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        return fs.zoom_map(shape, floats(self.zoom, len(shape), 1.0)), tuple(shape)


@register
@dataclass(frozen=True)
class Affine(SpatialTransform):
    """Centred affine resample with MONAI's parameter meaning: the sampling grid is scaled by
    ``scale``, shifted by ``translate`` voxels, sheared (``d*(d-1)`` off-diagonal coefficients)
    and rotated by ``rotate`` radians (so ``scale`` > 1 shrinks the content).
    ``spatial_size`` sets the output grid (default: the input's)."""

    rotate: float | tuple[float, ...] | None = None
    shear: float | tuple[float, ...] | None = None
    scale: float | tuple[float, ...] | None = None
    translate: float | tuple[float, ...] | None = None
    spatial_size: Size | None = None
    mode: str = "bilinear"
    padding_mode: str = "zeros"

    def plan(self, shape: tuple[int, ...], affine: torch.Tensor) -> tuple[np.ndarray, tuple[int, ...]]:
        d = len(shape)
        out = sizes(self.spatial_size, shape)
        t = None if self.translate is None else floats(self.translate, d, 0.0)
        return fs.affine_map(shape, self.rotate, self.shear, self.scale, t, out), out


# --- random spatial transforms ----------------------------------------------------------------
@register
@dataclass(frozen=True)
class RandFlip(Transform):
    """With probability ``prob`` flip along ``axes`` (None: all spatial axes; each axis drawn
    independently when ``independent``)."""

    prob: float = 0.5
    axes: int | tuple[int, ...] | None = None
    independent: bool = False
    is_random: ClassVar[bool] = True
    fusable: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        if self.axes is None:
            axes = list(range(ref.ndim))
        else:
            axes = [self.axes] if isinstance(self.axes, int) else list(self.axes)
        if self.independent:
            chosen = [a for a in axes if coin(rng, self.prob)]
        else:
            chosen = axes if coin(rng, self.prob) else []
        return Flip(axes=tuple(chosen)) if chosen else None


@register
@dataclass(frozen=True)
class RandRotate90(Transform):
    """With probability ``prob`` rotate by k in 1..``max_k`` quarter turns in plane ``axes``."""

    prob: float = 0.5
    max_k: int = 3
    axes: tuple[int, int] = (0, 1)
    is_random: ClassVar[bool] = True
    fusable: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        k = integer(rng, 1, self.max_k + 1)
        return Rotate90(k=k, axes=self.axes) if apply else None


@register
@dataclass(frozen=True)
class RandAffine(Transform):
    """With probability ``prob`` apply an ``Affine`` with parameters drawn uniformly:
    ``rotate_range`` (radians), ``shear_range``, ``translate_range`` (voxels) are symmetric ranges
    (x means [-x, x]) or (lo, hi) pairs per axis; ``scale_range`` is added to 1."""

    prob: float = 0.1
    rotate_range: AxisRanges = None
    shear_range: AxisRanges = None
    translate_range: AxisRanges = None
    scale_range: AxisRanges = None
    spatial_size: Size | None = None
    mode: str = "bilinear"
    padding_mode: str = "zeros"
    is_random: ClassVar[bool] = True
    fusable: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        d = ref.ndim
        apply = coin(rng, self.prob)
        n_rot = 1 if d == 2 else 3
        n_shear = d * (d - 1)
        rot = tuple(uniform(rng, *r) for r in axis_ranges(self.rotate_range, n_rot))
        shear = tuple(uniform(rng, *r) for r in axis_ranges(self.shear_range, n_shear))
        trans = tuple(uniform(rng, *r) for r in axis_ranges(self.translate_range, d))
        scale = tuple(1.0 + uniform(rng, *r) for r in axis_ranges(self.scale_range, d))
        if not apply:
            return None
        return Affine(rotate=rot, shear=shear, scale=scale, translate=trans, spatial_size=self.spatial_size,
                      mode=self.mode, padding_mode=self.padding_mode)


@register
@dataclass(frozen=True)
class Elastic(Transform):
    """Deterministic elastic deformation: a smooth random displacement field generated from
    ``seed`` (uniform noise in [-1, 1] blurred with ``sigma`` voxels, scaled by ``magnitude``
    voxels), optionally on top of an ``Affine``. Not invertible."""

    seed: int = 0
    sigma: float = 5.0
    magnitude: float = 100.0
    mode: str = "bilinear"
    padding_mode: str = "zeros"

    def apply(self, img: Image) -> Image:
        d = img.ndim
        if d not in (2, 3):
            raise ValueError("Elastic needs a 2D or 3D image")
        g = torch.Generator(device=img.device.type if img.device.type != "mps" else "cpu")
        g.manual_seed(int(self.seed))
        shape = img.spatial_shape
        noise = torch.rand((d, *shape), generator=g, device=img.device) * 2 - 1
        disp = fs.gaussian_smooth(noise, [self.sigma] * d) * float(self.magnitude)
        # dense map: input coordinate = output index + displacement
        x = img.data if img.data.is_floating_point() else img.data.float()
        base = torch.stack(
            torch.meshgrid(*[torch.arange(n, device=img.device, dtype=torch.float32) for n in shape], indexing="ij")
        )
        coords = base + disp
        sizes = torch.tensor([max(n - 1, 1) for n in shape], device=img.device, dtype=torch.float32).reshape(
            d, *([1] * d)
        )
        grid = (2 * coords / sizes - 1).flip(0).movedim(0, -1)[None]
        out = torch.nn.functional.grid_sample(x[None], grid, mode="nearest" if self.mode == "nearest" else "bilinear",
                                              padding_mode=self.padding_mode, align_corners=True)[0]
        if self.mode == "nearest" and not img.data.is_floating_point():
            out = out.round().to(img.data.dtype)
        return img.with_op(self.op(kind="deform", in_shape=list(shape)), data=out)


@register
@dataclass(frozen=True)
class RandElastic(Transform):
    """With probability ``prob`` apply an ``Elastic`` deformation with ``sigma`` and ``magnitude``
    drawn from ``sigma_range`` and ``magnitude_range`` and a fresh noise seed."""

    prob: float = 0.1
    sigma_range: tuple[float, float] = (5.0, 7.0)
    magnitude_range: tuple[float, float] = (50.0, 150.0)
    mode: str = "bilinear"
    padding_mode: str = "zeros"
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        sigma = uniform(rng, *self.sigma_range)
        mag = uniform(rng, *self.magnitude_range)
        noise_seed = seed(rng)
        if not apply:
            return None
        return Elastic(seed=noise_seed, sigma=sigma, magnitude=mag, mode=self.mode, padding_mode=self.padding_mode)

