"""Intensity transforms. They change voxel values only (geometry untouched) and record an
``intensity`` op, which inversion skips. Random ones resolve to the deterministic transform named
in their docstring, so a replay reproduces the sample exactly (noise is regenerated from a drawn
seed on the image's own device)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from medcore.io.image import Image
from medcore.transforms.base import Resolved, Sample, Transform, register
from medcore.transforms.functional import intensity as fi
from medcore.transforms.functional.spatial import gaussian_smooth
from medcore.transforms.random import Range, as_range, coin, seed, uniform


class IntensityTransform(Transform):
    """Subclasses implement ``compute(data) -> data`` and may implement ``compute_(data)``, the
    in-place version, which ``Compose`` uses on float tensors it created itself in the same call
    (never on the caller's tensors, never on a view of them)."""

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def compute_(self, data: torch.Tensor) -> torch.Tensor | None:
        """The in-place variant, or None where there is none."""
        return None

    def apply(self, img: Image) -> Image:
        return img.with_op(self.op(kind="intensity"), data=self.compute(img.data))

    def apply_owned(self, img: Image) -> Image:
        out = self.compute_(img.data) if img.data.is_floating_point() else None
        if out is None:
            return self.apply(img)
        return img.with_op(self.op(kind="intensity"), data=out)


@register
@dataclass(frozen=True)
class ScaleIntensityRange(IntensityTransform):
    """Map ``[a_min, a_max]`` onto ``[b_min, b_max]``, clipping if ``clip``. With ``percentiles``,
    ``a_min``/``a_max`` are percentiles (0-100) of the image (per channel if ``channel_wise``)."""

    a_min: float = 0.0
    a_max: float = 1.0
    b_min: float | None = 0.0
    b_max: float | None = 1.0
    clip: bool = False
    percentiles: bool = False
    channel_wise: bool = False

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        if not self.percentiles:
            return fi.scale_intensity_range(data, self.a_min, self.a_max, self.b_min, self.b_max, self.clip)
        chans = [data[c:c + 1] for c in range(data.shape[0])] if self.channel_wise else [data]
        outs = []
        for x in chans:
            lo, hi = fi.percentiles(x, [self.a_min, self.a_max])
            outs.append(fi.scale_intensity_range(x, lo, hi, self.b_min, self.b_max, self.clip))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def compute_(self, data: torch.Tensor) -> torch.Tensor | None:
        if self.percentiles or self.a_max == self.a_min or self.b_min is None or self.b_max is None:
            return self.compute(data)
        data.sub_(self.a_min).mul_((self.b_max - self.b_min) / (self.a_max - self.a_min)).add_(self.b_min)
        return data.clamp_(self.b_min, self.b_max) if self.clip else data


@register
@dataclass(frozen=True)
class NormalizeIntensity(IntensityTransform):
    """Zero mean, unit std over all (or only ``nonzero``) voxels, per channel if ``channel_wise``."""

    nonzero: bool = False
    channel_wise: bool = False
    subtrahend: float | None = None
    divisor: float | None = None

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return fi.normalize_intensity(data, self.nonzero, self.channel_wise, self.subtrahend, self.divisor)


@register
@dataclass(frozen=True)
class Clip(IntensityTransform):
    """Clamp intensities to ``[min, max]`` (either may be None)."""

    min: float | None = None
    max: float | None = None

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return data.clamp(self.min, self.max)

    def compute_(self, data: torch.Tensor) -> torch.Tensor | None:
        return data.clamp_(self.min, self.max)


@register
@dataclass(frozen=True)
class ScaleIntensity(IntensityTransform):
    """Multiply by ``1 + factor``."""

    factor: float = 0.0

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return fi.as_float(data) * (1.0 + self.factor)

    def compute_(self, data: torch.Tensor) -> torch.Tensor | None:
        return data.mul_(1.0 + self.factor)


@register
@dataclass(frozen=True)
class ShiftIntensity(IntensityTransform):
    """Add ``offset``."""

    offset: float = 0.0

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return fi.as_float(data) + self.offset

    def compute_(self, data: torch.Tensor) -> torch.Tensor | None:
        return data.add_(self.offset)


@register
@dataclass(frozen=True)
class AdjustContrast(IntensityTransform):
    """Gamma ``gamma`` on min-max normalised intensities, mapped back to the original range;
    ``invert``: on the negated image (nnU-Net's inverted gamma); ``retain_stats``: keep the mean and
    standard deviation (as MONAI's ``AdjustContrast``)."""

    gamma: float = 1.0
    invert: bool = False
    retain_stats: bool = False

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return fi.adjust_contrast(data, self.gamma, invert=self.invert, retain_stats=self.retain_stats)


@register
@dataclass(frozen=True)
class ScaleIntensityFixedMean(IntensityTransform):
    """Contrast: scale deviations from the mean by ``1 + factor`` (per channel if ``channel_wise``),
    clipped to the input range if ``preserve_range`` (as MONAI's transform of the same name)."""

    factor: float = 0.0
    preserve_range: bool = True
    channel_wise: bool = True

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return fi.scale_intensity_fixed_mean(data, self.factor, self.preserve_range, self.channel_wise)


@register
@dataclass(frozen=True)
class SimulateLowResolution(IntensityTransform):
    """Downsample by ``zoom`` (< 1) with ``downsample_mode`` and back with ``upsample_mode``: the
    grid is unchanged, only the detail is lost (as MONAI's ``RandSimulateLowResolution``)."""

    zoom: float = 1.0
    downsample_mode: str = "nearest"
    upsample_mode: str = "trilinear"

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return fi.simulate_low_resolution(data, self.zoom, self.downsample_mode, self.upsample_mode)


@register
@dataclass(frozen=True)
class GaussianNoise(IntensityTransform):
    """Add N(``mean``, ``std``) noise generated from ``seed`` on the image's device."""

    mean: float = 0.0
    std: float = 0.1
    seed: int = 0

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        x = fi.as_float(data)
        g = torch.Generator(device=x.device)
        g.manual_seed(int(self.seed))
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return x + (noise * self.std + self.mean)


@register
@dataclass(frozen=True)
class GaussianSmooth(IntensityTransform):
    """Separable Gaussian blur, ``sigma`` voxels per axis (edges replicated)."""

    sigma: float | tuple[float, ...] = 1.0

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        return gaussian_smooth(data, self.sigma)


@register
@dataclass(frozen=True)
class BiasField(IntensityTransform):
    """Multiply by the smooth field ``exp(polynomial)`` of ``degree`` with ``coeffs``."""

    coeffs: tuple[float, ...] = ()
    degree: int = 3

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        x = fi.as_float(data)
        return x * fi.bias_field(x.shape[1:], self.coeffs, self.degree, x.device, x.dtype)


# --- random versions ---------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class RandGaussianNoise(Transform):
    """With probability ``prob`` add noise of std drawn from [0, ``std``] (-> ``GaussianNoise``)."""

    prob: float = 0.1
    mean: float = 0.0
    std: float = 0.1
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        std = uniform(rng, 0.0, self.std)
        noise_seed = seed(rng)
        return GaussianNoise(self.mean, std, noise_seed) if apply else None


@register
@dataclass(frozen=True)
class RandGaussianSmooth(Transform):
    """With probability ``prob`` blur with sigma drawn per axis from ``sigma_range``
    (-> ``GaussianSmooth``)."""

    prob: float = 0.1
    sigma_range: tuple[float, float] = (0.25, 1.5)
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        sig = [uniform(rng, *self.sigma_range) for _ in range(ref.ndim)]
        return GaussianSmooth(tuple(sig)) if apply else None


@register
@dataclass(frozen=True)
class RandScaleIntensity(Transform):
    """With probability ``prob`` multiply by 1 + f, f from ``factors`` (-> ``ScaleIntensity``)."""

    factors: Range = 0.1
    prob: float = 0.1
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        f = uniform(rng, *as_range(self.factors))
        return ScaleIntensity(f) if apply else None


@register
@dataclass(frozen=True)
class RandShiftIntensity(Transform):
    """With probability ``prob`` add an offset from ``offsets`` (-> ``ShiftIntensity``)."""

    offsets: Range = 0.1
    prob: float = 0.1
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        o = uniform(rng, *as_range(self.offsets))
        return ShiftIntensity(o) if apply else None


@register
@dataclass(frozen=True)
class RandAdjustContrast(Transform):
    """With probability ``prob`` apply a gamma from ``gamma`` range (-> ``AdjustContrast``)."""

    prob: float = 0.1
    gamma: tuple[float, float] = (0.5, 4.5)
    invert: bool = False
    retain_stats: bool = False
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        g = uniform(rng, *self.gamma)
        return AdjustContrast(g, self.invert, self.retain_stats) if apply else None


@register
@dataclass(frozen=True)
class RandScaleIntensityFixedMean(Transform):
    """With probability ``prob`` scale the contrast about the mean by 1 + f, f from ``factors``
    (-> ``ScaleIntensityFixedMean``)."""

    prob: float = 0.1
    factors: Range = 0.25
    preserve_range: bool = True
    channel_wise: bool = True
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        f = uniform(rng, *as_range(self.factors))
        return ScaleIntensityFixedMean(f, self.preserve_range, self.channel_wise) if apply else None


@register
@dataclass(frozen=True)
class RandSimulateLowResolution(Transform):
    """With probability ``prob`` simulate a resolution coarser by a zoom from ``zoom_range``
    (-> ``SimulateLowResolution``)."""

    prob: float = 0.1
    zoom_range: tuple[float, float] = (0.5, 1.0)
    downsample_mode: str = "nearest"
    upsample_mode: str = "trilinear"
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        zoom = uniform(rng, *self.zoom_range)
        return SimulateLowResolution(zoom, self.downsample_mode, self.upsample_mode) if apply else None


@register
@dataclass(frozen=True)
class RandBiasField(Transform):
    """With probability ``prob`` multiply by a smooth bias field, coefficients uniform in
    ``coeff_range`` (-> ``BiasField``)."""

    prob: float = 0.1
    degree: int = 3
    coeff_range: tuple[float, float] = (0.0, 0.1)
    is_random: ClassVar[bool] = True

    def resolve(self, ref: Image, rng: torch.Generator | None, sample: Sample | None = None) -> Resolved:
        apply = coin(rng, self.prob)
        n = len(fi.monomials(ref.ndim, self.degree))
        coeffs = tuple(uniform(rng, *self.coeff_range) for _ in range(n))
        return BiasField(coeffs, self.degree) if apply else None
