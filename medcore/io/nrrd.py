"""A small NRRD reader (attached ``.nrrd`` or detached ``.nhdr``; raw or gzip encoding).

Geometry: ``space directions`` and ``space origin`` give the voxel->world map in the file's
``space``; left-posterior-superior (what ITK/Slicer write) is converted to RAS by negating the
first two world axes. A non-spatial axis (direction ``none``) becomes the channel axis.
"""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import torch

from medcore.io.image import Image

_TYPES = {
    "signed char": "i1", "int8": "i1", "int8_t": "i1", "uchar": "u1", "unsigned char": "u1", "uint8": "u1",
    "uint8_t": "u1", "short": "i2", "short int": "i2", "signed short": "i2", "int16": "i2", "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "uint16": "u2", "uint16_t": "u2", "int": "i4", "signed int": "i4",
    "int32": "i4", "int32_t": "i4", "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
    "longlong": "i8", "long long": "i8", "int64": "i8", "int64_t": "i8", "ulonglong": "u8", "uint64": "u8",
    "uint64_t": "u8", "float": "f4", "double": "f8",
}
_LPS_TO_RAS = {"left-posterior-superior": [-1, -1, 1], "lps": [-1, -1, 1], "right-anterior-superior": [1, 1, 1],
               "ras": [1, 1, 1], "left-anterior-superior": [-1, 1, 1], "las": [-1, 1, 1]}


def _vector(text: str) -> list[float] | None:
    text = text.strip()
    if text == "none":
        return None
    return [float(v) for v in text.strip("()").split(",")]


def load_nrrd(path: str | os.PathLike[str]) -> Image:
    """Read an NRRD file into a channel-first ``Image`` with a RAS affine."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.startswith(b"NRRD"):
        raise ValueError(f"{path}: not an NRRD file (no 'NRRD' magic); check the file")
    head, sep, body = raw.partition(b"\n\n")
    if not sep:
        head, sep, body = raw.partition(b"\r\n\r\n")
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip().lower()] = value.lstrip("=").strip()
    try:
        dtype = np.dtype(_TYPES[fields["type"].lower()])
        sizes = [int(v) for v in fields["sizes"].split()]
    except KeyError as exc:
        raise ValueError(f"{path}: NRRD header lacks or has an unsupported field {exc}; supported types: "
                         f"{sorted(set(_TYPES))}") from None
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder("<" if fields.get("endian", "little") == "little" else ">")
    if "data file" in fields:
        body = (path.parent / fields["data file"]).read_bytes()
    encoding = fields.get("encoding", "raw").lower()
    if encoding in ("gzip", "gz"):
        body = gzip.decompress(body)
    elif encoding != "raw":
        raise ValueError(f"{path}: NRRD encoding {encoding!r} is not supported (raw, gzip); re-save it as gzip")
    count = int(np.prod(sizes))
    if len(body) < count * dtype.itemsize:
        raise ValueError(f"{path}: NRRD data is truncated ({len(body)} of {count * dtype.itemsize} bytes)")
    arr = np.frombuffer(body[len(body) - count * dtype.itemsize:], dtype=dtype).reshape(sizes[::-1]).T
    arr = arr.astype(dtype.newbyteorder("="))
    dirs_text = re.findall(r"\([^)]*\)|none", fields.get("space directions", ""))
    dirs = [_vector(t) for t in dirs_text] if dirs_text else [None] * len(sizes)
    spatial = [i for i, v in enumerate(dirs) if v is not None] or list(range(len(sizes)))
    channel = [i for i in range(len(sizes)) if i not in spatial]
    if len(channel) > 1:
        raise ValueError(f"{path}: NRRD with {len(channel)} non-spatial axes is not supported")
    arr = np.moveaxis(arr, channel[0], 0) if channel else arr[None]
    d = len(spatial)
    affine = np.eye(4)
    for j, ax in enumerate(spatial):
        v = dirs[ax]
        if v is None:
            v = [0.0] * d
            v[j] = 1.0
        affine[: len(v), j] = v
    origin = _vector(fields.get("space origin", "none") or "none")
    if origin is not None:
        affine[: len(origin), 3] = origin
    space = fields.get("space", "left-posterior-superior" if dirs_text else "ras").lower()
    signs = _LPS_TO_RAS.get(space)
    if signs is None:
        raise ValueError(f"{path}: NRRD space {space!r} is not supported (LPS/RAS/LAS)")
    affine[:3] = np.diag(signs) @ affine[:3]
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.int32)
    meta = {"source_format": "nrrd", "original_dtype": str(dtype), "original_shape": list(arr.shape[1:])}
    return Image(torch.from_numpy(np.ascontiguousarray(arr)), torch.from_numpy(affine), meta, [])
