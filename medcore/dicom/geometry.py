"""Slice geometry from DICOM headers: normals, ordering, spacing and the RAS affine.

Pure numpy on ImageOrientationPatient (IOP), ImagePositionPatient (IPP) and PixelSpacing.
Conventions: the first three IOP values are the direction of increasing column index (along a
row), the last three the direction of increasing row index; PixelSpacing is (row spacing,
column spacing). Volumes are laid out ``(column, row, slice)`` so the NIfTI i axis follows
the DICOM row direction. DICOM world space is LPS; the affines returned here are RAS.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]

LPS_TO_RAS: FloatArray = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Two orientations whose direction cosines differ by less than this are the same orientation.
ORIENTATION_TOLERANCE = 1e-3


def as_iop(iop: ArrayLike) -> FloatArray:
    """IOP as a ``(2, 3)`` array of unit vectors (row direction, column direction)."""
    arr = np.asarray(iop, dtype=np.float64).reshape(2, 3)
    norms: FloatArray = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        raise ValueError(f"ImageOrientationPatient {list(np.ravel(iop))} has a zero direction")
    out: FloatArray = arr / norms
    return out


def slice_normal(iop: ArrayLike) -> FloatArray:
    """Unit normal of the image plane: row direction x column direction (right-handed)."""
    rc = as_iop(iop)
    n: FloatArray = np.cross(rc[0], rc[1])
    return n / float(np.linalg.norm(n))


def slice_positions(ipps: ArrayLike, normal: ArrayLike) -> FloatArray:
    """Signed distance of each IPP along ``normal`` (mm); shape ``(n,)``."""
    out: FloatArray = np.asarray(ipps, dtype=np.float64).reshape(-1, 3) @ np.asarray(normal, dtype=np.float64)
    return out


def sort_order(ipps: ArrayLike, iop: ArrayLike) -> NDArray[np.intp]:
    """Indices that sort slices by position along the slice normal (stable)."""
    return np.argsort(slice_positions(ipps, slice_normal(iop)), kind="stable")


def in_plane_offsets(ipps: ArrayLike, iop: ArrayLike, pixel_spacing: ArrayLike) -> FloatArray:
    """Offset of each IPP from the first, in pixels along (column, row) axes; shape ``(n, 2)``.

    Zero for a straight stack; a steady drift means gantry tilt (a sheared stack).
    """
    rc = as_iop(iop)
    d = np.asarray(ipps, dtype=np.float64).reshape(-1, 3)
    d = d - d[0]
    ps = np.asarray(pixel_spacing, dtype=np.float64)
    return np.stack([d @ rc[0] / ps[1], d @ rc[1] / ps[0]], axis=1)


def tilt_degrees(ipps: ArrayLike, iop: ArrayLike) -> float:
    """Angle (degrees) between the slice-stacking direction and the slice normal.

    0 for a straight stack, the gantry tilt angle for a tilted CT. Needs two distinct positions.
    """
    d = np.asarray(ipps, dtype=np.float64).reshape(-1, 3)
    step = d[-1] - d[0]
    length = float(np.linalg.norm(step))
    if length < 1e-6:
        return 0.0
    cos = abs(float(step @ slice_normal(iop))) / length
    return float(np.degrees(np.arccos(min(1.0, cos))))


def affine_lps(iop: ArrayLike, ipp0: ArrayLike, pixel_spacing: ArrayLike, slice_step: float) -> FloatArray:
    """Voxel ``(col, row, slice)`` -> LPS mm for a straight stack starting at ``ipp0``."""
    rc = as_iop(iop)
    ps = np.asarray(pixel_spacing, dtype=np.float64)
    a = np.eye(4)
    a[:3, 0] = rc[0] * ps[1]
    a[:3, 1] = rc[1] * ps[0]
    a[:3, 2] = slice_normal(iop) * float(slice_step)
    a[:3, 3] = np.asarray(ipp0, dtype=np.float64)
    return a


def affine_ras(iop: ArrayLike, ipp0: ArrayLike, pixel_spacing: ArrayLike, slice_step: float) -> FloatArray:
    """Voxel ``(col, row, slice)`` -> RAS mm (NIfTI convention) for a straight stack."""
    out: FloatArray = LPS_TO_RAS @ affine_lps(iop, ipp0, pixel_spacing, slice_step)
    return out


def slice_thickness_default(pixel_spacing: ArrayLike) -> float:
    """Step used for single-slice volumes: the larger in-plane spacing (a neutral choice)."""
    return float(np.max(np.asarray(pixel_spacing, dtype=np.float64)))
