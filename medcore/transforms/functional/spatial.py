"""Pure geometry functions: voxel maps, affine updates and ONE resampler.

A geometric operation on a ``d``-dimensional grid is a *voxel map*: a ``(d+1, d+1)`` float64
matrix ``M`` sending an OUTPUT voxel index to the INPUT voxel index it reads, plus the output
shape. The output affine is ``affine @ embed(M)``, so every voxel keeps its world position.
Composing maps is a matrix product, which is how consecutive spatial transforms fuse into one
resample (ARCHITECTURE rule 7).

``resample`` picks the cheapest exact path:
1. *gather* - ``M`` is a signed permutation with integer offsets (flips, rot90, orientation,
   integer crops/pads): pure indexing, bit-exact, any dtype;
2. *separable* - ``M`` is a permutation times a diagonal (spacing, zoom, resize, and those fused
   with 1.): one 1-D interpolation per axis (trilinear is separable), no dense grid;
3. *grid* - anything else (rotation, shear): ``torch.nn.functional.grid_sample``.
All paths run on the input's device. Linear modes return float32 (float64 stays float64);
``nearest`` keeps the dtype. Out-of-grid samples are 0 (``padding_mode="zeros"``) or clamped to
the edge (``"border"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import nibabel.orientations as nio
import numpy as np
import torch
import torch.nn.functional as F

from medcore.transforms.functional.crop_pad import compact

TOL = 1e-6
LINEAR = ("bilinear", "linear", "trilinear")


# --- affine helpers ---------------------------------------------------------------------------
def spatial_affine(affine: torch.Tensor, d: int) -> np.ndarray:
    """The ``(d+1, d+1)`` voxel->world block of a 4x4 affine (world axes 0..d-1)."""
    a = np.asarray(affine, dtype=np.float64)
    idx = list(range(d)) + [3]
    return a[np.ix_(idx, idx)]


def embed(m: np.ndarray) -> np.ndarray:
    """Embed a ``(d+1, d+1)`` voxel map into 4x4 (identity on the unused voxel axes)."""
    m = np.asarray(m, dtype=np.float64)
    d = m.shape[0] - 1
    out = np.eye(4)
    out[:d, :d] = m[:d, :d]
    out[:d, 3] = m[:d, d]
    return out


def update_affine(affine: torch.Tensor, m: np.ndarray) -> torch.Tensor:
    """Affine of the output grid of voxel map ``m`` (output voxel -> world)."""
    return torch.from_numpy(np.asarray(affine, dtype=np.float64) @ embed(m))


def translation(offsets: Sequence[float]) -> np.ndarray:
    d = len(offsets)
    m = np.eye(d + 1)
    m[:d, d] = offsets
    return m


# --- voxel maps for each operation -------------------------------------------------------------
def flip_map(shape: Sequence[int], axes: Sequence[int]) -> np.ndarray:
    d = len(shape)
    m = np.eye(d + 1)
    for a in axes:
        m[a, a] = -1.0
        m[a, d] = shape[a] - 1
    return m


def rot90_map(shape: Sequence[int], k: int, axes: Sequence[int] = (0, 1)) -> tuple[np.ndarray, tuple[int, ...]]:
    """Voxel map of ``torch.rot90(x, k, dims=axes)`` (rotation from the first axis to the second)."""
    d = len(shape)
    a, b = axes
    m = np.eye(d + 1)
    out = list(shape)
    for _ in range(k % 4):
        # one quarter turn: out[.., i, .., j, ..] = in[.., j, .., n_b - 1 - i, ..]
        step = np.eye(d + 1)
        step[a, a] = 0.0
        step[a, b] = 1.0
        step[b, b] = 0.0
        step[b, a] = -1.0
        step[b, d] = out[b] - 1
        out[a], out[b] = out[b], out[a]
        m = m @ step
    return m, tuple(out)


def orientation_map(affine: torch.Tensor, shape: Sequence[int], axcodes: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Voxel map that reorders/flips voxel axes so they point along ``axcodes`` (e.g. "RAS")."""
    d = len(shape)
    if len(axcodes) != d:
        raise ValueError(
            f"Orientation: axcodes {axcodes!r} has {len(axcodes)} letters but the image has {d} spatial axes"
        )
    src = nio.io_orientation(spatial_affine(affine, d))  # type: ignore[no-untyped-call]
    labels = (("L", "R"), ("P", "A"), ("I", "S"))[:d]
    dst = nio.axcodes2ornt(tuple(axcodes.upper()), labels=labels)  # type: ignore[no-untyped-call]
    tr = nio.ornt_transform(src, dst)  # type: ignore[no-untyped-call]
    m = np.zeros((d + 1, d + 1))
    m[d, d] = 1.0
    out = [0] * d
    for i in range(d):
        j, sign = int(tr[i, 0]), float(tr[i, 1])
        m[i, j] = sign
        m[i, d] = shape[i] - 1 if sign < 0 else 0.0
        out[j] = int(shape[i])
    return m, tuple(out)


def spacing_map(
    affine: torch.Tensor, shape: Sequence[int], pixdim: Sequence[float | None]
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Voxel map onto a grid with voxel size ``pixdim`` (mm), same axis directions, shear removed.

    The output grid starts at the input corner that is lowest along every output axis (so for a
    RAS-like volume voxel 0 keeps its world position) and covers the input's voxel centres:
    ``n_out = round(extent / pixdim) + 1``. If no corner is lowest along all axes (strong
    obliquity) the grid centres are aligned instead. ``None``/``<=0`` keeps an axis' spacing.
    """
    d = len(shape)
    a = np.asarray(affine, dtype=np.float64)
    rzs = a[:3, :d]
    old = np.linalg.norm(rzs, axis=0)
    target = np.array(
        [
            old[i] if (p is None or p <= 0) else float(p)
            for i, p in enumerate(list(pixdim) + [None] * (d - len(pixdim)))
        ][:d]
    )
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rot = rzs @ np.linalg.inv(zs)
    new_rzs = rot @ np.diag(np.sign(np.diag(zs)) * target)
    pinv_in = np.linalg.pinv(rzs)
    # input corners expressed in (untranslated) output voxel coordinates
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(d, -1)
    world = rzs @ corners  # relative to the input origin
    pinv_out = np.linalg.pinv(new_rzs)
    c_out = pinv_out @ world
    out_shape = tuple(int(v) for v in np.round(np.ptp(c_out, axis=1) + 1.0))
    mins = c_out.min(axis=1)
    hit = np.where(np.all(np.isclose(c_out, mins[:, None], atol=1e-4), axis=0))[0]
    if hit.size:
        origin_rel = world[:, hit[0]]  # out voxel 0 sits on that input corner
    else:
        origin_rel = rzs @ (np.asarray(shape) / 2.0) - new_rzs @ (np.asarray(out_shape) / 2.0)
    m = np.eye(d + 1)
    m[:d, :d] = pinv_in @ new_rzs
    m[:d, d] = pinv_in @ origin_rel
    return m, out_shape


def zoom_map(shape: Sequence[int], zoom: Sequence[float]) -> np.ndarray:
    """Scale content by ``zoom`` about the grid centre, same output shape (zoom > 1 enlarges)."""
    d = len(shape)
    c = (np.asarray(shape, dtype=np.float64) - 1) / 2
    m = np.eye(d + 1)
    z = np.asarray(zoom, dtype=np.float64)
    m[:d, :d] = np.diag(1.0 / z)
    m[:d, d] = c - c / z
    return m


def resize_map(shape: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Map of ``F.interpolate(..., align_corners=False)``: voxel edges stay on voxel edges."""
    d = len(shape)
    s = np.asarray(shape, dtype=np.float64) / np.asarray(size, dtype=np.float64)
    m = np.eye(d + 1)
    m[:d, :d] = np.diag(s)
    m[:d, d] = 0.5 * s - 0.5
    return m


def rotation_matrix(angles: Sequence[float] | float, d: int) -> np.ndarray:
    """``d x d`` rotation: 2D one angle; 3D three right-handed angles (radians) about axes 0, 1, 2,
    composed as ``R0 @ R1 @ R2`` (MONAI's convention)."""
    ang = [float(angles)] if isinstance(angles, int | float | np.number) else [float(v) for v in angles]
    if d == 2:
        t = ang[0]
        return np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    ang = (ang + [0.0, 0.0, 0.0])[:3]  # a single 3D angle rotates about axis 0
    r = np.eye(3)
    for axis, t in enumerate(ang):
        c, s = math.cos(t), math.sin(t)
        i, j = (axis + 1) % 3, (axis + 2) % 3  # right-handed rotation about ``axis``
        rot = np.eye(3)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        r = r @ rot
    return r


def centred_affine_map(shape: Sequence[int], matrix: np.ndarray, translate: Sequence[float] | np.ndarray | None = None,
                       out_shape: Sequence[int] | None = None) -> np.ndarray:
    """Voxel map ``in - c_in = matrix @ (out - c_out) + translate`` about the grid centres.

    As in MONAI, ``matrix`` transforms the SAMPLING grid (output -> input), so the content moves
    by its inverse; ``translate`` is in input voxels."""
    d = len(shape)
    out_shape = shape if out_shape is None else out_shape
    c_in = (np.asarray(shape, dtype=np.float64) - 1) / 2
    c_out = (np.asarray(out_shape, dtype=np.float64) - 1) / 2
    t = np.zeros(d) if translate is None else np.asarray(translate, dtype=np.float64)
    mat = np.asarray(matrix, dtype=np.float64)
    m = np.eye(d + 1)
    m[:d, :d] = mat
    m[:d, d] = c_in - mat @ c_out + t
    return m


def shear_matrix(d: int, shear: Sequence[float] | float) -> np.ndarray:
    """``d x d`` shear: one elementary shear per off-diagonal coefficient (``d*(d-1)``, row by
    row), each pre-multiplied so the first applies first and the determinant stays 1."""
    sh = np.eye(d)
    vals = [float(v) for v in np.atleast_1d(shear)]
    offdiag = [(i, j) for i in range(d) for j in range(d) if i != j]
    for (i, j), v in zip(offdiag, vals, strict=False):
        e = np.eye(d)
        e[i, j] = v
        sh = e @ sh
    return sh


def affine_map(shape: Sequence[int], rotate: Sequence[float] | float | None = None,
               shear: Sequence[float] | float | None = None, scale: Sequence[float] | float | None = None,
               translate: Sequence[float] | None = None, out_shape: Sequence[int] | None = None) -> np.ndarray:
    """Voxel map of a centred sampling-grid transform ``R @ Sh @ T @ S`` (MONAI's order): the
    output grid is scaled, translated (voxels), sheared, then rotated into the input."""
    d = len(shape)
    rs = np.eye(d)
    if rotate is not None:
        rs = rs @ rotation_matrix(rotate, d)
    if shear is not None:
        rs = rs @ shear_matrix(d, shear)
    scales = np.atleast_1d(np.asarray(scale, dtype=np.float64)) if scale is not None else np.ones(1)
    s = np.diag([float(v) for v in (list(scales) * d)[:d]] if scales.size == 1 else [float(v) for v in scales[:d]])
    t = np.zeros(d) if translate is None else np.asarray([float(v) for v in translate], dtype=np.float64)
    return centred_affine_map(shape, rs @ s, rs @ t, out_shape)


def bounding_shape(shape: Sequence[int], matrix: np.ndarray) -> tuple[int, ...]:
    """Shape of the box holding the input voxel centres after moving them by ``inv(matrix)``."""
    d = len(shape)
    corners = np.array(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(d, -1)
    moved = np.linalg.inv(np.asarray(matrix)) @ corners
    return tuple(int(v) for v in np.round(np.ptp(moved, axis=1) + 1.0))


# --- resampling ----------------------------------------------------------------------------------
def _signed_permutation(a: np.ndarray) -> list[int] | None:
    """For each input axis k, the output axis feeding it, if every row/column has one nonzero."""
    d = a.shape[0]
    nz = np.abs(a) > TOL
    if not (np.all(nz.sum(axis=1) == 1) and np.all(nz.sum(axis=0) == 1)):
        return None
    return [int(np.argmax(nz[k])) for k in range(d)]


def _axis_resample(x: torch.Tensor, dim: int, coords: np.ndarray, mode: str, padding: str) -> torch.Tensor:
    """Sample ``x`` along ``dim`` at float ``coords`` (1-D linear or nearest), same layout.

    Integer coordinates inside the grid are views or gathers (exact, dtype kept). Linear: two
    slab gathers and one ``lerp`` for outer dims; the innermost dim, where gathers are
    element-wise and slow, is a matmul with the (2-nonzeros-per-column) interpolation matrix."""
    n = x.shape[dim]
    if padding == "border":
        coords = np.clip(coords, 0, n - 1)
    rounded = np.round(coords)
    dev = x.device
    if np.all(np.abs(coords - rounded) < TOL):
        idx = rounded.astype(np.int64)
        if np.all((idx >= 0) & (idx < n)):
            lo = int(idx[0])
            if idx.size == n and np.array_equal(idx, np.arange(n)):
                return x
            if idx.size == n and np.array_equal(idx, np.arange(n)[::-1]):
                return torch.flip(x, (dim,))
            if np.array_equal(idx, np.arange(lo, lo + idx.size)):
                return x.narrow(dim, lo, idx.size)
            return x.index_select(dim, torch.from_numpy(idx).to(dev))
        mode = "nearest"  # integer coords, partly outside: nearest == linear
    if mode == "nearest":
        idx = np.rint(coords).astype(np.int64)  # half to even, like grid_sample
        inside = (idx >= 0) & (idx < n)
        y = x.index_select(dim, torch.from_numpy(np.clip(idx, 0, n - 1)).to(dev))
        if not inside.all():
            y.index_fill_(dim, torch.from_numpy(np.nonzero(~inside)[0]).to(dev), 0)
        return y
    i0 = np.floor(coords).astype(np.int64)
    w1 = coords - i0
    i1 = i0 + 1
    ok0, ok1 = (i0 >= 0) & (i0 < n), (i1 >= 0) & (i1 < n)
    ftype = _float_dtype(x.dtype)
    if dim == x.ndim - 1:
        w = np.zeros((n, coords.size))
        cols = np.arange(coords.size)
        np.add.at(w, (i0[ok0], cols[ok0]), (1.0 - w1)[ok0])
        np.add.at(w, (i1[ok1], cols[ok1]), w1[ok1])
        xf = x if x.dtype == ftype else x.to(ftype)
        return xf @ torch.from_numpy(w).to(device=dev, dtype=ftype)
    a = x.index_select(dim, torch.from_numpy(np.clip(i0, 0, n - 1)).to(dev))
    b = x.index_select(dim, torch.from_numpy(np.clip(i1, 0, n - 1)).to(dev))
    if a.dtype != ftype:
        a, b = a.to(ftype), b.to(ftype)
    # "zeros" padding: a neighbour outside the grid contributes 0 (lerp weights still sum to 1)
    if not ok0.all():
        a.index_fill_(dim, torch.from_numpy(np.nonzero(~ok0)[0]).to(dev), 0)
    if not ok1.all():
        b.index_fill_(dim, torch.from_numpy(np.nonzero(~ok1)[0]).to(dev), 0)
    view = [1] * x.ndim
    view[dim] = coords.size
    weight = torch.from_numpy(w1).to(device=dev, dtype=ftype).reshape(view)
    return torch.lerp(a, b, weight, out=a)


def _integer_gather(x: torch.Tensor, a: np.ndarray, b: np.ndarray, perm: list[int],
                    out_shape: tuple[int, ...]) -> torch.Tensor | None:
    """Flips/rot90/orientation/crops (unit steps, integer offsets, inside the grid) as ONE copy:
    narrow views, a permute view, then a single ``torch.flip``. None if the map is not such."""
    d = len(perm)
    y = x
    reversed_out: list[int] = []
    for k in range(d):
        j = perm[k]
        step, n_out, n = a[k, j], out_shape[j], x.shape[k + 1]
        if abs(abs(step) - 1.0) > TOL or abs(b[k] - round(b[k])) > TOL:
            return None
        first = int(round(b[k]))
        last = first + int(round(step)) * (n_out - 1)
        if min(first, last) < 0 or max(first, last) > n - 1:
            return None
        y = y.narrow(k + 1, min(first, last), n_out)
        if step < 0:
            reversed_out.append(j + 1)
    inv = [0] * d
    for k in range(d):
        inv[perm[k]] = k
    if inv != list(range(d)):
        y = y.permute(0, *[i + 1 for i in inv])
    if reversed_out:
        y = torch.flip(y, reversed_out)
    return compact(y.contiguous())


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def resample(data: torch.Tensor, m: np.ndarray, out_shape: Sequence[int], mode: str = "bilinear",
             padding_mode: str = "zeros") -> torch.Tensor:
    """Resample channel-first ``data`` through voxel map ``m`` onto ``out_shape`` (see module doc)."""
    if mode not in ("nearest", *LINEAR):
        raise ValueError(f"resample: mode must be 'nearest' or 'bilinear', got {mode!r}")
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"resample: padding_mode must be 'zeros' or 'border', got {padding_mode!r}")
    m = np.asarray(m, dtype=np.float64)
    d = data.ndim - 1
    out_shape = tuple(int(s) for s in out_shape)
    a, b = m[:d, :d], m[:d, d]
    perm = _signed_permutation(a)
    if perm is not None:
        exact = _integer_gather(data, a, b, perm, out_shape)
        if exact is not None:
            return exact
        x = data
        mode_1d = "nearest" if mode == "nearest" else "linear"
        # most-shrinking axes first: later passes then touch fewer voxels
        order = sorted(range(d), key=lambda k: out_shape[perm[k]] / max(data.shape[k + 1], 1))
        for k in order:
            coords = a[k, perm[k]] * np.arange(out_shape[perm[k]], dtype=np.float64) + b[k]
            x = _axis_resample(x, k + 1, coords, mode_1d, padding_mode)
        # axis k of x now runs along output axis perm[k]
        inv = [0] * d
        for k in range(d):
            inv[perm[k]] = k
        if inv != list(range(d)):
            x = x.permute(0, *[i + 1 for i in inv])
        return compact(x)
    return _grid_resample(data, m, out_shape, mode, padding_mode)


def _grid_resample(
    data: torch.Tensor, m: np.ndarray, out_shape: tuple[int, ...], mode: str, padding_mode: str
) -> torch.Tensor:
    d = data.ndim - 1
    if d not in (2, 3):
        raise ValueError(f"resample: rotations/shears need 2 or 3 spatial axes, got {d}")
    dev = data.device
    dtype = _float_dtype(data.dtype) if data.dtype != torch.float64 else torch.float64
    in_shape = np.asarray(data.shape[1:], dtype=np.float64)
    # normalised coords (align_corners=True): g = 2 * i / (n - 1) - 1; fold that into the map
    norm_in = np.eye(d + 1)
    norm_in[:d, :d] = np.diag(np.where(in_shape > 1, 2.0 / np.maximum(in_shape - 1, 1), 0.0))
    norm_in[:d, d] = np.where(in_shape > 1, -1.0, 0.0)
    g = norm_in @ m  # output voxel -> normalised input coordinate
    # grid_sample wants the last dim in (x=W, y=H, z=D) order: reverse the spatial axes
    rev = g[:d][::-1]
    mat = torch.from_numpy(rev.copy()).to(device=dev, dtype=torch.float32 if dtype != torch.float64 else torch.float64)
    axes = [torch.arange(n, device=dev, dtype=mat.dtype) for n in out_shape]
    grid = mat[:, d].clone().expand(*out_shape, d).clone()
    for j in range(d):
        shape = [1] * d
        shape[j] = out_shape[j]
        grid += axes[j].reshape(*shape, 1) * mat[:, j]
    x = data.to(dtype)[None]
    out = F.grid_sample(x, grid[None], mode="nearest" if mode == "nearest" else "bilinear",
                        padding_mode="zeros" if padding_mode == "zeros" else "border", align_corners=True)[0]
    if mode == "nearest" and not data.is_floating_point():
        out = out.round().to(data.dtype)
    return out


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, device: torch.device | str | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    radius = max(int(truncate * sigma + 0.5), 1)
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(dtype)


def gaussian_smooth(data: torch.Tensor, sigma: Sequence[float] | float) -> torch.Tensor:
    """Separable Gaussian blur per channel (sigma in voxels; 0 skips an axis), edges replicated."""
    d = data.ndim - 1
    sig = [float(sigma)] * d if isinstance(sigma, int | float | np.number) else [float(s) for s in sigma]
    x = data if data.is_floating_point() else data.float()
    for axis, s in enumerate(sig):
        if s <= 0:
            continue
        k = gaussian_kernel1d(s, device=x.device, dtype=x.dtype)
        r = (k.numel() - 1) // 2
        moved = x.movedim(axis + 1, -1)
        shp = moved.shape
        flat = moved.reshape(-1, 1, shp[-1])
        flat = F.pad(flat, (r, r), mode="replicate")
        flat = F.conv1d(flat, k.reshape(1, 1, -1))
        x = flat.reshape(shp).movedim(-1, axis + 1)
    return x.contiguous()
