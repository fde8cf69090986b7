"""Resample a tilted or irregularly spaced stack onto a regular, orthogonal grid.

The output grid shares the first slice's in-plane axes and origin; its slices are
perpendicular to the plane normal at ``target`` distances along it. An output voxel is the
linear interpolation, along the normal, of the two input planes around it, each sampled
(bilinearly) at the in-plane point that lies on the same normal line. That in-plane point is
the output pixel shifted by the input slice's origin drift, which is what gantry tilt is.
Voxels that fall outside every input plane take ``fill`` (the stack minimum by default).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def _shifted(slice_2d: np.ndarray, offset_col_row: np.ndarray, fill: float) -> np.ndarray:
    """Input plane sampled at output pixel coordinates (row, col) - offset; outside -> NaN."""
    shift = (float(offset_col_row[1]), float(offset_col_row[0]))
    plane = slice_2d.astype(np.float32, copy=False)
    if abs(shift[0]) < 1e-6 and abs(shift[1]) < 1e-6:
        return plane
    out = ndimage.shift(plane, shift, order=1, mode="nearest", prefilter=False)
    rows, cols = plane.shape
    r = np.arange(rows) - shift[0]
    c = np.arange(cols) - shift[1]
    eps = 1e-6
    out[(r < -eps) | (r > rows - 1 + eps), :] = np.nan
    out[:, (c < -eps) | (c > cols - 1 + eps)] = np.nan
    return out


def resample_stack(stack: np.ndarray, positions: np.ndarray, offsets: np.ndarray,
                   target: np.ndarray, fill: float | None = None) -> np.ndarray:
    """Resample ``stack`` ``(n, rows, cols)`` at normal distances ``positions`` (ascending).

    ``offsets[k]`` is slice k's origin drift in pixels (col, row) from the first slice;
    ``target`` the ascending output distances. Returns ``(len(target), rows, cols)`` float32.
    """
    positions = np.asarray(positions, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if stack.shape[0] != len(positions) or len(positions) != len(offsets):
        raise ValueError("stack, positions and offsets must have one entry per slice")
    if np.any(np.diff(positions) <= 0):
        raise ValueError("positions must be strictly ascending")
    fill = float(np.min(stack)) if fill is None else float(fill)
    out = np.empty((len(target), *stack.shape[1:]), dtype=np.float32)
    cache: dict[int, np.ndarray] = {}

    def plane(k: int) -> np.ndarray:
        if k not in cache:
            for old in [key for key in cache if key < k - 1]:
                del cache[old]
            cache[k] = _shifted(stack[k], offsets[k], fill)
        return cache[k]

    upper = np.searchsorted(positions, target, side="left")
    for j, t in enumerate(target):
        k1 = int(min(max(upper[j], 0), len(positions) - 1))
        if abs(positions[k1] - t) < 1e-6:
            out[j] = plane(k1)
            continue
        k0 = max(k1 - 1, 0)
        if k0 == k1 or t < positions[0] or t > positions[-1]:
            out[j] = fill
            continue
        w = (t - positions[k0]) / (positions[k1] - positions[k0])
        out[j] = (1.0 - w) * plane(k0) + w * plane(k1)
    np.nan_to_num(out, copy=False, nan=fill)
    return out


def cast_like(resampled: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round back to an integer ``dtype`` (clipped to its range); floats stay float32."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(resampled), info.min, info.max).astype(dtype)
    return resampled.astype(np.float32, copy=False)
