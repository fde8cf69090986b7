"""Sanity checks of written volumes: a usable affine, and a label map on its image's voxel grid.

They read NIfTI headers only (no voxel data), so checking a whole output tree is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["AFFINE_TOLERANCE_MM", "geometry_problem", "geometry_problems", "grid_mismatch"]

AFFINE_TOLERANCE_MM = 1e-3


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray, tuple[float, ...]]:
    """``(shape, affine, voxel sizes)`` of a NIfTI file, from its header."""
    img: Any = nib.load(str(path))  # a NIfTI image (nibabel types it as any file-based image)
    zooms = tuple(float(z) for z in img.header.get_zooms())
    return tuple(int(n) for n in img.shape), np.asarray(img.affine, dtype=float), zooms


def geometry_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the NIfTI at ``path`` is not a usable volume (affine not finite or singular, voxel sizes
    that disagree with the affine, fewer than 3 dimensions), or None when it is."""
    path = Path(path)
    shape, affine, zooms = _header(path)
    if len(shape) < 3:
        return f"{path.name}: {len(shape)}D, expected a volume"
    if not np.isfinite(affine).all() or abs(float(np.linalg.det(affine[:3, :3]))) < 1e-9:
        return f"{path.name}: affine is not finite or is singular"
    sizes = zooms[:3]
    if min(sizes) <= 0 or not np.allclose(np.linalg.norm(affine[:3, :3], axis=0), sizes, rtol=1e-3, atol=1e-4):
        return f"{path.name}: voxel sizes {sizes} disagree with the affine"
    return None


def geometry_problems(folder: str | os.PathLike[str]) -> list[str]:
    """:func:`geometry_problem` of every NIfTI under ``folder`` that has one."""
    found = (geometry_problem(p) for p in sorted(Path(folder).rglob("*.nii*")))
    return [p for p in found if p is not None]


def grid_mismatch(image: str | os.PathLike[str], mask: str | os.PathLike[str],
                  tolerance_mm: float = AFFINE_TOLERANCE_MM) -> str | None:
    """Why the label map ``mask`` does not lie on ``image``'s voxel grid (shape or affine), or None."""
    img_shape, img_affine, _ = _header(Path(image))
    mask_shape, mask_affine, _ = _header(Path(mask))
    if img_shape[:3] != mask_shape[:3]:
        return f"shape {mask_shape} differs from the image's {img_shape}"
    diff = float(np.abs(img_affine - mask_affine).max())
    if diff > tolerance_mm:
        return f"affine differs from the image's by up to {diff:.4g} mm"
    return None
