"""Pure intensity functions on channel-first tensors (any device). Integer input gives float32."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


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


def adjust_contrast(x: torch.Tensor, gamma: float, eps: float = 1e-7) -> torch.Tensor:
    """Gamma on the min-max normalised intensities, mapped back to the original range."""
    x = as_float(x)
    lo = x.min()
    rng = x.max() - lo
    return ((x - lo) / (rng + eps)).pow(gamma) * rng + lo


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
