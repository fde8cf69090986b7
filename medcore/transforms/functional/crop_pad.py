"""Pure crop/pad functions. One primitive: ``crop_pad(data, before, after)`` where positive numbers
pad and negative numbers crop each spatial side; its voxel map is a translation by ``-before``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def crop_pad(data: torch.Tensor, before: Sequence[int], after: Sequence[int], mode: str = "constant",
             value: float = 0.0) -> torch.Tensor:
    """Pad (positive) or crop (negative) each spatial side of channel-first ``data``. A pure crop
    returns a VIEW (no copy); ``compact`` it before keeping it long (``Compose`` does)."""
    d = data.ndim - 1
    before = [int(v) for v in before]
    after = [int(v) for v in after]
    if len(before) != d or len(after) != d:
        raise ValueError(f"crop_pad: need {d} values per side, got {before} / {after}")
    x = data
    slices = [slice(None)]
    for k in range(d):
        n = x.shape[k + 1]
        lo, hi = max(-before[k], 0), n - max(-after[k], 0)
        if hi <= lo:
            raise ValueError(
                f"crop_pad: cropping {-before[k]}+{-after[k]} voxels leaves nothing of axis {k} (size {n})"
            )
        slices.append(slice(lo, hi))
    x = x[tuple(slices)]
    pads = []
    for k in reversed(range(d)):
        pads += [max(before[k], 0), max(after[k], 0)]
    if any(pads):
        if mode == "constant":
            if not x.is_floating_point() or x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                out_shape = [x.shape[0]] + [x.shape[k + 1] + max(before[k], 0) + max(after[k], 0) for k in range(d)]
                out = torch.full(out_shape, value, dtype=x.dtype, device=x.device)
                region = [slice(None)] + [
                    slice(max(before[k], 0), max(before[k], 0) + x.shape[k + 1]) for k in range(d)
                ]
                out[tuple(region)] = x
                return out
        x = F.pad(x[None].float() if not x.is_floating_point() else x[None], pads, mode=mode)[0].to(data.dtype)
    return x


def compact(x: torch.Tensor) -> torch.Tensor:
    """``x`` in its own contiguous storage: a crop must not keep its whole source volume alive
    (that would defeat in-memory caching)."""
    if not x.is_contiguous() or x.untyped_storage().nbytes() > x.numel() * x.element_size():
        return x.contiguous() if not x.is_contiguous() else x.clone()
    return x


def bounds_to_sides(shape: Sequence[int], start: Sequence[int], end: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(before, after)`` that crop/pad ``shape`` to the box ``[start, end)`` (may exceed the grid)."""
    before = [-int(s) for s in start]
    after = [int(e) - int(n) for e, n in zip(end, shape, strict=True)]
    return before, after


def center_box(shape: Sequence[int], size: Sequence[int]) -> tuple[list[int], list[int]]:
    """Start/end of a centred crop box of ``size`` (``<= 0``/None keeps the axis; never larger than
    the grid): the box starts at ``n // 2 - s // 2``."""
    size = [n if (s is None or s <= 0) else min(int(s), n) for s, n in zip(size, shape, strict=True)]
    start = [n // 2 - s // 2 for n, s in zip(shape, size, strict=True)]
    return start, [a + s for a, s in zip(start, size, strict=True)]


def symmetric_pad(shape: Sequence[int], size: Sequence[int]) -> tuple[list[int], list[int]]:
    """``(before, after)`` padding ``shape`` up to at least ``size``, the odd voxel after."""
    total = [max(int(s) - n, 0) if s is not None and s > 0 else 0 for s, n in zip(size, shape, strict=True)]
    before = [t // 2 for t in total]
    return before, [t - b for t, b in zip(total, before, strict=True)]


def foreground_box(mask: torch.Tensor, margin: Sequence[int] | int = 0) -> tuple[list[int], list[int]] | None:
    """Bounding box ``[start, end)`` of the True voxels of a spatial mask (any channel), or None."""
    m = mask.any(dim=0) if mask.ndim > 1 else mask
    d = m.ndim
    margins = [int(margin)] * d if isinstance(margin, int | np.integer) else [int(v) for v in margin]
    start, end = [], []
    for k in range(d):
        other = tuple(i for i in range(d) if i != k)
        proj = m.any(dim=other) if other else m
        idx = torch.nonzero(proj).flatten()
        if idx.numel() == 0:
            return None
        start.append(max(int(idx[0]) - margins[k], 0))
        end.append(min(int(idx[-1]) + 1 + margins[k], m.shape[k]))
    return start, end
