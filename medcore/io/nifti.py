"""NIfTI read/write through nibabel, channel-first, with atomic writes.

Layout: a 3D file ``(X, Y, Z)`` becomes ``(1, X, Y, Z)``; a 4D file ``(X, Y, Z, T)`` becomes
``(T, X, Y, Z)`` (the 4th axis is the channel axis); a 5D file ``(X, Y, Z, 1, C)`` becomes
``(C, X, Y, Z)``; a 2D file ``(X, Y)`` becomes ``(1, X, Y)``. float64 data are read as float32
(medcore never carries float64 volumes); integer and uint8 data keep their dtype. The affine is
nibabel's best affine (sform if set, else qform, else from pixdims). ``.nii.gz`` files are
inflated in one zlib call (see ``_read``).
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt
import torch

from medcore.io.image import Image
from medcore.utils.atomic import atomic_path

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | os.PathLike[str]) -> bool:
    name = str(path).lower()
    return name.endswith(NIFTI_SUFFIXES)


def c_order_copy(a: np.ndarray, dtype: npt.DTypeLike | None = None) -> np.ndarray:
    """A C-ordered, writable copy of ``a`` (cast to ``dtype``). NIfTI voxels are stored
    Fortran-ordered; a plain transposing copy of a large volume thrashes the cache, so 3D arrays
    are copied in (32 x Y x 8) tiles - several times faster."""
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    out = np.empty(a.shape, dtype=dtype)
    if a.ndim != 3 or a.flags.c_contiguous or a.size < 1 << 16:
        out[...] = a
        return out
    tx, tz = 32, 8
    for x0 in range(0, a.shape[0], tx):
        for z0 in range(0, a.shape[2], tz):
            out[x0:x0 + tx, :, z0:z0 + tz] = a[x0:x0 + tx, :, z0:z0 + tz]
    return out


def _channel_first(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim in (2, 3):
        return arr[None]
    if arr.ndim == 4:
        return np.moveaxis(arr, 3, 0)
    if arr.ndim == 5 and arr.shape[3] == 1:
        return np.moveaxis(arr[:, :, :, 0], 3, 0)
    raise ValueError(f"{path}: unsupported NIfTI shape {arr.shape}; expected 2D, 3D, 4D or (X,Y,Z,1,C)")


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(affine, voxels)``. Header parsing is nibabel's; for ``.nii.gz`` the file is inflated in
    ONE zlib call and the voxels are a view of that buffer (faster than nibabel's streaming
    reader). Scaling (``scl_slope``/``scl_inter``) is applied as nibabel does."""
    if not str(path).lower().endswith(".gz"):
        nii: Any = nib.load(str(path))
        return np.asarray(nii.affine), np.asanyarray(nii.dataobj)
    raw = zlib.decompress(path.read_bytes(), 47)  # 47 = gzip/zlib header, largest window
    sizeof_hdr = int.from_bytes(raw[:4], "little")
    hdr_cls = nib.Nifti2Header if sizeof_hdr == 540 or int.from_bytes(raw[:4], "big") == 540 else nib.Nifti1Header
    head = io.BytesIO(raw[: hdr_cls.template_dtype.itemsize])
    header = hdr_cls.from_fileobj(head)  # type: ignore[no-untyped-call]
    shape = header.get_data_shape()
    dtype = header.get_data_dtype()
    offset = int(header.get_data_offset())
    count = int(np.prod(shape))
    if len(raw) < offset + count * dtype.itemsize:
        raise ValueError(f"voxel data truncated ({len(raw) - offset} of {count * dtype.itemsize} bytes)")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape, order="F")
    slope, inter = header.get_slope_inter()
    if slope is not None and (slope != 1.0 or (inter or 0.0) != 0.0):
        arr = arr * np.float64(slope) + np.float64(inter or 0.0)
    return np.asarray(header.get_best_affine()), arr


def load_nifti(path: str | os.PathLike[str]) -> Image:
    """Read a ``.nii``/``.nii.gz`` file into a channel-first :class:`Image`."""
    path = Path(path)
    try:
        affine_np, arr = _read(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such NIfTI file; check the path") from None
    except Exception as exc:  # nibabel raises several types for corrupt/truncated files
        raise ValueError(f"{path}: cannot read NIfTI ({type(exc).__name__}: {exc}); the file may be "
                         f"truncated or not NIfTI - re-export or re-download it") from exc
    original_dtype = str(arr.dtype)
    target = {np.dtype(np.float64): np.float32, np.dtype(np.uint16): np.int32,  # torch: poor uint16 support
              np.dtype(np.bool_): np.uint8}.get(arr.dtype, arr.dtype)
    arr = _channel_first(arr, path)
    arr = np.stack([c_order_copy(c, target) for c in arr]) if arr.shape[0] > 1 else c_order_copy(arr[0], target)[None]
    affine = torch.from_numpy(np.asarray(affine_np, dtype=np.float64))
    meta = {"source_format": "nifti", "original_dtype": original_dtype,
            "original_shape": list(arr.shape[1:]), "original_affine": affine.tolist()}
    return Image(torch.from_numpy(arr), affine, meta, [])


def save_nifti(img: Image, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
    """Write ``img`` as NIfTI (qform and sform both set, code 1), atomically. Returns the path.

    Channel-first data go back to NIfTI order: one channel -> 3D (or 2D) file, several -> 4D with
    the channels on the 4th axis. bool is stored as uint8, float64 as float32.
    """
    path = Path(path)
    if not is_nifti(path):
        raise ValueError(f"{path}: NIfTI output needs a .nii or .nii.gz suffix")
    data = img.data.detach()
    if dtype is not None:
        data = data.to(dtype)
    if data.dtype == torch.bool:
        data = data.to(torch.uint8)
    if data.dtype in (torch.float64, torch.float16, torch.bfloat16):
        data = data.to(torch.float32)
    arr = data.cpu().numpy()
    arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    affine = img.affine.numpy()
    nii = nib.Nifti1Image(arr, affine)  # type: ignore[no-untyped-call]
    nii.header.set_qform(affine, code=1)  # type: ignore[no-untyped-call]
    nii.header.set_sform(affine, code=1)  # type: ignore[no-untyped-call]
    nii.header.set_xyzt_units("mm", "sec")  # type: ignore[no-untyped-call]
    with atomic_path(path) as tmp:
        nib.save(nii, str(tmp))
    return path
