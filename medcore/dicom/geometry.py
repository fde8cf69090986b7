"""Slice geometry from DICOM headers: normals, ordering, spacing and the RAS affine.

Pure numpy on ImageOrientationPatient (IOP), ImagePositionPatient (IPP) and PixelSpacing.
Conventions: the first three IOP values are the direction of increasing column index (along a
row), the last three the direction of increasing row index; PixelSpacing is (row spacing,
column spacing). Volumes are laid out ``(column, row, slice)`` so the NIfTI i axis follows
the DICOM row direction. DICOM world space is LPS; the affines returned here are RAS.
"""

from __future__ import annotations

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Two orientations whose direction cosines differ by less than this are the same orientation.
ORIENTATION_TOLERANCE = 1e-3


def as_iop(iop) -> np.ndarray:
    """IOP as a ``(2, 3)`` array of unit vectors (row direction, column direction)."""
    arr = np.asarray(iop, dtype=np.float64).reshape(2, 3)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if np.any(norms < 1e-6):
        raise ValueError(f"ImageOrientationPatient {list(np.ravel(iop))} has a zero direction")
    return arr / norms


def slice_normal(iop) -> np.ndarray:
    """Unit normal of the image plane: row direction x column direction (right-handed)."""
    rc = as_iop(iop)
    n = np.cross(rc[0], rc[1])
    return n / np.linalg.norm(n)


def same_orientation(iop_a, iop_b, tol: float = ORIENTATION_TOLERANCE) -> bool:
    """True when two IOPs describe the same plane orientation within ``tol``."""
    return bool(np.max(np.abs(as_iop(iop_a) - as_iop(iop_b))) < tol)


def slice_positions(ipps, normal) -> np.ndarray:
    """Signed distance of each IPP along ``normal`` (mm); shape ``(n,)``."""
    return np.asarray(ipps, dtype=np.float64).reshape(-1, 3) @ np.asarray(normal, dtype=np.float64)


def sort_order(ipps, iop) -> np.ndarray:
    """Indices that sort slices by position along the slice normal (stable)."""
    return np.argsort(slice_positions(ipps, slice_normal(iop)), kind="stable")


def in_plane_offsets(ipps, iop, pixel_spacing) -> np.ndarray:
    """Offset of each IPP from the first, in pixels along (column, row) axes; shape ``(n, 2)``.

    Zero for a straight stack; a steady drift means gantry tilt (a sheared stack).
    """
    rc = as_iop(iop)
    d = np.asarray(ipps, dtype=np.float64).reshape(-1, 3)
    d = d - d[0]
    ps = np.asarray(pixel_spacing, dtype=np.float64)
    return np.stack([d @ rc[0] / ps[1], d @ rc[1] / ps[0]], axis=1)


def tilt_degrees(ipps, iop) -> float:
    """Angle (degrees) between the slice-stacking direction and the slice normal.

    0 for a straight stack, the gantry tilt angle for a tilted CT. Needs two distinct positions.
    """
    d = np.asarray(ipps, dtype=np.float64).reshape(-1, 3)
    step = d[-1] - d[0]
    length = np.linalg.norm(step)
    if length < 1e-6:
        return 0.0
    cos = abs(float(step @ slice_normal(iop))) / length
    return float(np.degrees(np.arccos(min(1.0, cos))))


def affine_lps(iop, ipp0, pixel_spacing, slice_step) -> np.ndarray:
    """Voxel ``(col, row, slice)`` -> LPS mm for a straight stack starting at ``ipp0``."""
    rc = as_iop(iop)
    ps = np.asarray(pixel_spacing, dtype=np.float64)
    a = np.eye(4)
    a[:3, 0] = rc[0] * ps[1]
    a[:3, 1] = rc[1] * ps[0]
    a[:3, 2] = slice_normal(iop) * float(slice_step)
    a[:3, 3] = np.asarray(ipp0, dtype=np.float64)
    return a


def affine_ras(iop, ipp0, pixel_spacing, slice_step) -> np.ndarray:
    """Voxel ``(col, row, slice)`` -> RAS mm (NIfTI convention) for a straight stack."""
    return LPS_TO_RAS @ affine_lps(iop, ipp0, pixel_spacing, slice_step)


def slice_thickness_default(pixel_spacing) -> float:
    """Step used for single-slice volumes: the larger in-plane spacing (a neutral choice)."""
    return float(max(np.asarray(pixel_spacing, dtype=np.float64)))
