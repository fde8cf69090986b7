"""Image carrier and image I/O: ``Image``, ``load_image``, ``save_image``.

``load_image`` dispatches on the file name: ``.nii``/``.nii.gz`` through nibabel, ``.nrrd``/``.nhdr``
through the small built-in reader. A DICOM series folder is read one layer up, by
``medcore.data.load_volume`` (``medcore.io`` sits below ``medcore.dicom`` and never imports it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from medcore.io.image import Image, as_affine
from medcore.io.nifti import c_order_copy, is_nifti, load_nifti, save_nifti
from medcore.io.nrrd import load_nrrd

__all__ = ["Image", "as_affine", "c_order_copy", "load_image", "save_image", "load_nifti", "save_nifti"]


def load_image(path: str | os.PathLike[str]) -> Image:
    """Load a NIfTI or NRRD file into a channel-first ``Image``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder, not an image file; load a DICOM series folder with "
                                "medcore.data.load_volume")
    if is_nifti(path):
        return load_nifti(path)
    if path.suffix.lower() in (".nrrd", ".nhdr"):
        return load_nrrd(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    raise ValueError(f"{path}: unknown image format; expected .nii, .nii.gz or .nrrd (or, through "
                     "medcore.data.load_volume, a DICOM series folder)")


def save_image(img: Image, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
    """Save ``img`` as NIfTI (the only write format), atomically."""
    return save_nifti(img, path, dtype=dtype)
