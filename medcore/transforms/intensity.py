"""Intensity transforms. They change voxel values only (geometry untouched) and record an
``intensity`` op, which inversion skips. Random ones resolve to the deterministic transform named
in their docstring, so a replay reproduces the sample exactly (noise is regenerated from a drawn
seed on the image's own device)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from medcore.io.image import Image
from medcore.transforms.base import Transform, register
from medcore.transforms.functional import intensity as fi
from medcore.transforms.functional.spatial import gaussian_smooth


def _uniform(rng, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=rng, dtype=torch.float64))


def _range(v) -> tuple[float, float]:
    """x -> (-x, x); (lo, hi) unchanged."""
    return (-float(v), float(v)) if np.isscalar(v) else (float(v[0]), float(v[1]))


def _coin(rng, prob: float) -> bool:
    return float(torch.rand((), generator=rng)) < prob


class IntensityTransform(Transform):
    """Subclasses implement ``compute(data) -> data`` and may implement ``compute_(data)``, the
    in-place version, which ``Compose`` uses on float tensors it created itself in the same call
    (never on the caller's tensors, never on a view of them)."""

    def compute(self, data: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    compute_ = None  # optional in-place variant

    def apply(self, img: Image) -> Image:
        return img.with_op(self.op(kind="intensity"), data=self.compute(img.data))

    def apply_owned(self, img: Image) -> Image:
        if self.compute_ is None or not img.data.is_floating_point():
            return self.apply(img)
        return img.with_op(self.op(kind="intensity"), data=self.compute_(img.data))


@register
@dataclass(eq=True)
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

    def compute(self, data):
        if not self.percentiles:
            return fi.scale_intensity_range(data, self.a_min, self.a_max, self.b_min, self.b_max, self.clip)
        chans = [data[c:c + 1] for c in range(data.shape[0])] if self.channel_wise else [data]
        outs = []
        for x in chans:
            lo, hi = fi.percentiles(x, [self.a_min, self.a_max])
            outs.append(fi.scale_intensity_range(x, lo, hi, self.b_min, self.b_max, self.clip))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def compute_(self, data):
        if self.percentiles or self.a_max == self.a_min or self.b_min is None or self.b_max is None:
            return self.compute(data)
        data.sub_(self.a_min).mul_((self.b_max - self.b_min) / (self.a_max - self.a_min)).add_(self.b_min)
        return data.clamp_(self.b_min, self.b_max) if self.clip else data


@register
@dataclass(eq=True)
class NormalizeIntensity(IntensityTransform):
    """Zero mean, unit std over all (or only ``nonzero``) voxels, per channel if ``channel_wise``."""

    nonzero: bool = False
    channel_wise: bool = False
    subtrahend: float | None = None
    divisor: float | None = None

    def compute(self, data):
        return fi.normalize_intensity(data, self.nonzero, self.channel_wise, self.subtrahend, self.divisor)


@register
@dataclass(eq=True)
class Clip(IntensityTransform):
    """Clamp intensities to ``[min, max]`` (either may be None)."""

    min: float | None = None
    max: float | None = None

    def compute(self, data):
        return data.clamp(self.min, self.max)

    def compute_(self, data):
        return data.clamp_(self.min, self.max)


@register
@dataclass(eq=True)
class ScaleIntensity(IntensityTransform):
    """Multiply by ``1 + factor``."""

    factor: float = 0.0

    def compute(self, data):
        return fi.as_float(data) * (1.0 + self.factor)

    def compute_(self, data):
        return data.mul_(1.0 + self.factor)


@register
@dataclass(eq=True)
class ShiftIntensity(IntensityTransform):
    """Add ``offset``."""

    offset: float = 0.0

    def compute(self, data):
        return fi.as_float(data) + self.offset

    def compute_(self, data):
        return data.add_(self.offset)


@register
@dataclass(eq=True)
class AdjustContrast(IntensityTransform):
    """Gamma ``gamma`` on min-max normalised intensities, mapped back to the original range."""

    gamma: float = 1.0

    def compute(self, data):
        return fi.adjust_contrast(data, self.gamma)


@register
@dataclass(eq=True)
class GaussianNoise(IntensityTransform):
    """Add N(``mean``, ``std``) noise generated from ``seed`` on the image's device."""

    mean: float = 0.0
    std: float = 0.1
    seed: int = 0

    def compute(self, data):
        x = fi.as_float(data)
        g = torch.Generator(device=x.device)
        g.manual_seed(int(self.seed))
        noise = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return x + (noise * self.std + self.mean)


@register
@dataclass(eq=True)
class GaussianSmooth(IntensityTransform):
    """Separable Gaussian blur, ``sigma`` voxels per axis (edges replicated)."""

    sigma: object = 1.0

    def compute(self, data):
        return gaussian_smooth(data, self.sigma)


@register
@dataclass(eq=True)
class BiasField(IntensityTransform):
    """Multiply by the smooth field ``exp(polynomial)`` of ``degree`` with ``coeffs``."""

    coeffs: tuple = ()
    degree: int = 3

    def compute(self, data):
        x = fi.as_float(data)
        return x * fi.bias_field(x.shape[1:], self.coeffs, self.degree, x.device, x.dtype)


# --- random versions ---------------------------------------------------------------------------
@register
@dataclass(eq=True)
class RandGaussianNoise(Transform):
    """With probability ``prob`` add noise of std drawn from [0, ``std``] (-> ``GaussianNoise``)."""

    prob: float = 0.1
    mean: float = 0.0
    std: float = 0.1
    is_random: ClassVar[bool] = True

    def resolve(self, ref, rng, sample=None):
        apply = _coin(rng, self.prob)
        std = _uniform(rng, 0.0, self.std)
        seed = int(torch.randint(0, 2**62, (), generator=rng))
        return GaussianNoise(self.mean, std, seed) if apply else None


@register
@dataclass(eq=True)
class RandGaussianSmooth(Transform):
    """With probability ``prob`` blur with sigma drawn per axis from ``sigma_range``
    (-> ``GaussianSmooth``)."""

    prob: float = 0.1
    sigma_range: tuple = (0.25, 1.5)
    is_random: ClassVar[bool] = True

    def resolve(self, ref, rng, sample=None):
        apply = _coin(rng, self.prob)
        sig = [_uniform(rng, *self.sigma_range) for _ in range(ref.ndim)]
        return GaussianSmooth(sig) if apply else None


@register
@dataclass(eq=True)
class RandScaleIntensity(Transform):
    """With probability ``prob`` multiply by 1 + f, f from ``factors`` (-> ``ScaleIntensity``)."""

    factors: object = 0.1
    prob: float = 0.1
    is_random: ClassVar[bool] = True

    def resolve(self, ref, rng, sample=None):
        apply = _coin(rng, self.prob)
        f = _uniform(rng, *_range(self.factors))
        return ScaleIntensity(f) if apply else None


@register
@dataclass(eq=True)
class RandShiftIntensity(Transform):
    """With probability ``prob`` add an offset from ``offsets`` (-> ``ShiftIntensity``)."""

    offsets: object = 0.1
    prob: float = 0.1
    is_random: ClassVar[bool] = True

    def resolve(self, ref, rng, sample=None):
        apply = _coin(rng, self.prob)
        o = _uniform(rng, *_range(self.offsets))
        return ShiftIntensity(o) if apply else None


@register
@dataclass(eq=True)
class RandAdjustContrast(Transform):
    """With probability ``prob`` apply a gamma from ``gamma`` range (-> ``AdjustContrast``)."""

    prob: float = 0.1
    gamma: tuple = (0.5, 4.5)
    is_random: ClassVar[bool] = True

    def resolve(self, ref, rng, sample=None):
        apply = _coin(rng, self.prob)
        g = _uniform(rng, *self.gamma)
        return AdjustContrast(g) if apply else None


@register
@dataclass(eq=True)
class RandBiasField(Transform):
    """With probability ``prob`` multiply by a smooth bias field, coefficients uniform in
    ``coeff_range`` (-> ``BiasField``)."""

    prob: float = 0.1
    degree: int = 3
    coeff_range: tuple = (0.0, 0.1)
    is_random: ClassVar[bool] = True

    def resolve(self, ref, rng, sample=None):
        apply = _coin(rng, self.prob)
        n = len(fi.monomials(ref.ndim, self.degree))
        coeffs = tuple(_uniform(rng, *self.coeff_range) for _ in range(n))
        return BiasField(coeffs, self.degree) if apply else None
