"""Image carrier and image I/O: ``Image``, ``load_image``, ``save_image``.

``load_image`` dispatches on the path: ``.nii``/``.nii.gz`` through nibabel, ``.nrrd``/``.nhdr``
through the small built-in reader, and a folder as one DICOM series through
``medcore.dicom.load_series`` (imported lazily, so medcore.io works without the DICOM stack).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from medcore.io.image import Image, as_affine
from medcore.io.nifti import c_order_copy, is_nifti, load_nifti, save_nifti
from medcore.io.nrrd import load_nrrd

__all__ = ["Image", "as_affine", "load_image", "save_image", "load_nifti", "save_nifti"]


def _load_dicom_series(folder: Path) -> Image:
    try:
        from medcore.dicom import load_series
    except ImportError as exc:
        raise ImportError(f"{folder}: reading a DICOM series needs medcore.dicom.load_series ({exc})") from exc
    array, affine, meta = load_series(folder)
    arr = np.asarray(array)
    target = {np.dtype(np.float64): np.float32, np.dtype(np.uint16): np.int32,
              np.dtype(np.bool_): np.uint8}.get(arr.dtype, arr.dtype)
    if arr.ndim in (2, 3):
        arr = c_order_copy(arr, target)[None]
    elif arr.ndim == 4:  # (X, Y, Z, T or colour): the 4th axis is the channel axis, as for NIfTI
        arr = np.stack([c_order_copy(arr[..., t], target) for t in range(arr.shape[3])])
    else:
        raise ValueError(f"{folder}: DICOM series gave an array of shape {arr.shape}; expected 2D-4D")
    meta = {**dict(meta or {}), "source_format": "dicom"}
    return Image(torch.from_numpy(arr), as_affine(affine), meta, [])


def load_image(path: str | os.PathLike[str]) -> Image:
    """Load a NIfTI file, an NRRD file or a DICOM series folder into a channel-first ``Image``."""
    path = Path(path)
    if path.is_dir():
        return _load_dicom_series(path)
    if is_nifti(path):
        return load_nifti(path)
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        return load_nrrd(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    raise ValueError(f"{path}: unknown image format; expected .nii, .nii.gz, .nrrd or a DICOM series folder")


def save_image(img: Image, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
    """Save ``img`` as NIfTI (the only write format), atomically."""
    return save_nifti(img, path, dtype=dtype)
