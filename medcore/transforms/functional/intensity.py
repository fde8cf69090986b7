"""Pure intensity functions on channel-first tensors (any device). Integer input gives float32."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def as_float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.float32)


def percentiles(x: torch.Tensor, qs: Sequence[float]) -> list[float]:
    """Linear-interpolated percentiles ``qs`` (0-100) of all of ``x`` (as ``numpy.percentile``).
    CPU: one ``numpy.partition`` for all of them; other devices: ``kthvalue`` (any size, no sort)."""
    flat = x.reshape(-1)
    n = flat.numel()
    if n == 0:
        raise ValueError("percentile of an empty tensor")
    pos = [(n - 1) * float(q) / 100.0 for q in qs]
    ks = sorted({min(int(p) + j, n - 1) for p in pos for j in (0, 1)})
    if flat.device.type == "cpu":
        arr = flat.numpy() if flat.dtype != torch.bfloat16 else flat.float().numpy()
        part = np.partition(arr, ks)
        value = {k: float(part[k]) for k in ks}
    else:
        f = flat if flat.is_floating_point() else flat.float()
        value = {k: float(f.kthvalue(k + 1).values) for k in ks}
    out = []
    for p in pos:
        lo = int(p)
        hi = min(lo + 1, n - 1)
        out.append(value[lo] + (value[hi] - value[lo]) * (p - lo))
    return out


def percentile(x: torch.Tensor, q: float) -> float:
    """One percentile; see ``percentiles``."""
    return percentiles(x, [q])[0]


def scale_intensity_range(x: torch.Tensor, a_min: float, a_max: float, b_min: float | None = 0.0,
                          b_max: float | None = 1.0, clip: bool = False) -> torch.Tensor:
    """Map ``[a_min, a_max]`` linearly onto ``[b_min, b_max]`` (optionally clipping to it)."""
    x = as_float(x)
    if a_max == a_min:
        return x - a_min if b_min is None else x - a_min + b_min
    if b_min is None or b_max is None:
        out = (x - a_min) / (a_max - a_min)
    else:
        scale = (b_max - b_min) / (a_max - a_min)
        out = (x - a_min) * scale + b_min
    if clip and b_min is not None and b_max is not None:
        out = out.clamp_(b_min, b_max)
    return out


def normalize_intensity(x: torch.Tensor, nonzero: bool = False, channel_wise: bool = False,
                        subtrahend: float | None = None, divisor: float | None = None) -> torch.Tensor:
    """``(x - mean) / std`` over all voxels, or only nonzero ones (others stay 0), per channel if
    ``channel_wise``. A zero std divides by 1. Fixed ``subtrahend``/``divisor`` override the stats."""
    x = as_float(x)
    out = x.clone()
    groups = [slice(c, c + 1) for c in range(x.shape[0])] if channel_wise else [slice(None)]
    for g in groups:
        v = x[g]
        mask = v != 0 if nonzero else None
        sel = v[mask] if mask is not None else v.reshape(-1)
        if sel.numel() == 0:
            continue
        mean = sel.mean() if subtrahend is None else torch.as_tensor(subtrahend, dtype=x.dtype, device=x.device)
        std = sel.std(unbiased=False) if divisor is None else torch.as_tensor(divisor, dtype=x.dtype, device=x.device)
        std = torch.where(std == 0, torch.ones_like(std), std)
        if mask is None:
            out[g] = (v - mean) / std
        else:
            out[g] = torch.where(mask, (v - mean) / std, v)
    return out


def adjust_contrast(x: torch.Tensor, gamma: float, eps: float = 1e-7, invert: bool = False,
                    retain_stats: bool = False) -> torch.Tensor:
    """Gamma on the min-max normalised intensities, mapped back to the original range.

    ``invert`` applies it to ``-x`` and negates the result (nnU-Net's inverted gamma, which brightens
    the dark end); ``retain_stats`` restores the mean and standard deviation of the input."""
    x = as_float(x)
    if invert:
        x = -x
    lo = x.min()
    rng = x.max() - lo
    out = ((x - lo) / (rng + eps)).pow(gamma) * rng + lo
    if retain_stats:
        mean, std = x.mean(), x.std()
        out = out - out.mean()
        out = out / (out.std() + 1e-8) * std + mean
    return -out if invert else out


def scale_intensity_fixed_mean(x: torch.Tensor, factor: float, preserve_range: bool = True,
                               channel_wise: bool = True) -> torch.Tensor:
    """Contrast: ``(x - mean) * (1 + factor) + mean`` (per channel if ``channel_wise``), clipped to
    the input's range when ``preserve_range`` (nnU-Net's contrast augmentation)."""
    x = as_float(x)
    chans = [x[c:c + 1] for c in range(x.shape[0])] if channel_wise else [x]
    outs = []
    for c in chans:
        mean = c.mean()
        out = (c - mean) * (1.0 + factor) + mean
        outs.append(out.clamp(c.min(), c.max()) if preserve_range else out)
    return torch.cat(outs) if len(outs) > 1 else outs[0]


def simulate_low_resolution(x: torch.Tensor, zoom: float, downsample_mode: str = "nearest",
                            upsample_mode: str = "trilinear") -> torch.Tensor:
    """Downsample every spatial axis by ``zoom`` (< 1) and resample back to the input's shape: the
    image a coarser scanner would give (``F.interpolate`` both ways, corners not aligned)."""
    xf = as_float(x)
    shape = tuple(xf.shape[1:])
    small = tuple(max(1, int(round(n * zoom))) for n in shape)
    linear = {"linear", "bilinear", "bicubic", "trilinear"}
    down = F.interpolate(xf[None], size=small, mode=downsample_mode,
                         align_corners=False if downsample_mode in linear else None)
    return F.interpolate(down, size=shape, mode=upsample_mode,
                         align_corners=False if upsample_mode in linear else None)[0]


def bias_field(shape: Sequence[int], coeffs: Sequence[float], degree: int, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``exp(sum c_k * monomial_k)`` on coordinates in [-1, 1] (monomials of total degree <= degree,
    in ``monomials(d, degree)`` order)."""
    d = len(shape)
    axes = [torch.linspace(-1, 1, n, device=device, dtype=dtype) for n in shape]
    field = torch.zeros(tuple(shape), device=device, dtype=dtype)
    for c, powers in zip(coeffs, monomials(d, degree), strict=False):
        term = torch.ones((), device=device, dtype=dtype)
        for k, p in enumerate(powers):
            if p:
                shp = [1] * d
                shp[k] = shape[k]
                term = term * axes[k].pow(p).reshape(shp)
        field = field + float(c) * term
    return torch.exp(field)


def monomials(d: int, degree: int) -> list[tuple[int, ...]]:
    """Exponent tuples of all ``d``-variate monomials of total degree 0..degree (constant first)."""
    out: list[tuple[int, ...]] = []

    def rec(prefix: tuple[int, ...], left: int) -> None:
        if len(prefix) == d:
            out.append(prefix)
            return
        for p in range(left + 1):
            rec(prefix + (p,), left - p)

    rec((), degree)
    return sorted(out, key=lambda t: (sum(t), [-v for v in t]))
