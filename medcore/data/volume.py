"""One entry point for an input volume: a NIfTI or NRRD file (``medcore.io``) or a DICOM series
folder (``medcore.dicom``). It lives here, above both, so that ``medcore.io`` never imports DICOM."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from medcore.dicom import load_series
from medcore.io import Image, as_affine, c_order_copy, load_image

#: what a DICOM series' voxels become (NIfTI-like types the rest of medcore expects)
_SERIES_DTYPES = {np.dtype(np.float64): np.float32, np.dtype(np.uint16): np.int32, np.dtype(np.bool_): np.uint8}


def load_series_image(folder: str | os.PathLike[str]) -> Image:
    """One DICOM series folder as a channel-first ``Image`` (``meta["source_format"] == "dicom"``)."""
    array, affine, meta = load_series(folder)
    arr = np.asarray(array)
    target = _SERIES_DTYPES.get(arr.dtype, arr.dtype)
    if arr.ndim in (2, 3):
        arr = c_order_copy(arr, target)[None]
    elif arr.ndim == 4:  # (X, Y, Z, T or colour): the 4th axis is the channel axis, as for NIfTI
        arr = np.stack([c_order_copy(arr[..., t], target) for t in range(arr.shape[3])])
    else:
        raise ValueError(f"{folder}: DICOM series gave an array of shape {arr.shape}; expected 2D-4D")
    return Image(torch.from_numpy(arr), as_affine(affine), {**dict(meta or {}), "source_format": "dicom"}, [])


def load_volume(path: str | os.PathLike[str]) -> Image:
    """A NIfTI file, an NRRD file or a DICOM series folder as a channel-first ``Image``."""
    return load_series_image(path) if Path(path).is_dir() else load_image(path)
