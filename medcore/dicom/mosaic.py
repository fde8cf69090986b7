"""Mosaics: one stored image holding a grid of slices, expanded into one Frame per tile.

Siemens MOSAIC:
The header's ImagePositionPatient is the corner of the whole mosaic; each tile's position is that
corner moved by half the size difference between the mosaic and one tile (in plane), then by
``i * spacing`` along the slice normal (the CSA ``SliceNormalVector`` when present).
"""

from __future__ import annotations

import math
import struct

import numpy as np

from medcore.dicom.frame import Frame, UnsupportedDicomError, with_changes
from medcore.dicom.values import as_floats

_CSA_IMAGE_HEADER = 0x00291010
_N_MOSAIC = 0x0019100A
_CSA_NAMES = frozenset({"NumberOfImagesInMosaic", "SliceNormalVector"})


def is_mosaic(ds) -> bool:
    """True when ``ds`` is a Siemens MOSAIC image holding more than one tile."""
    image_type = ds.get("ImageType") or ()
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    if "MOSAIC" not in {str(v).upper() for v in image_type}:
        return False
    return (number_of_tiles(ds) or 0) > 1


def parse_csa(raw: bytes, names: frozenset[str] | None = None) -> dict[str, list[str]]:
    """Parse a Siemens CSA header (SV10 or CSA1 layout) into ``{name: [item strings]}``.

    With ``names``, only those entries are decoded (the rest are skipped).

    Raises ``ValueError`` when the bytes are not a CSA header.
    """
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 16:
        raise ValueError("CSA header too short")
    pos = 8 if raw[:4] == b"SV10" else 0
    n_tags, _ = struct.unpack_from("<2I", raw, pos)
    if not 0 < n_tags <= 1000:
        raise ValueError(f"CSA header claims {n_tags} tags")
    pos += 8
    out: dict[str, list[str]] = {}
    for _ in range(n_tags):
        if pos + 84 > len(raw):
            raise ValueError("CSA header truncated")
        name = raw[pos : pos + 64].split(b"\x00", 1)[0].decode("latin-1")
        _vm, _vr, _syngo, n_items, _xx = struct.unpack_from("<i4sii i", raw, pos + 64)
        pos += 84
        keep = names is None or name in names
        items = []
        for _ in range(n_items):
            if pos + 16 > len(raw):
                raise ValueError("CSA header truncated")
            x = struct.unpack_from("<4i", raw, pos)
            pos += 16
            length = x[1]
            if length < 0 or pos + length > len(raw):
                raise ValueError("CSA item length out of range")
            if keep:
                items.append(raw[pos : pos + length].split(b"\x00", 1)[0].decode("latin-1").strip())
            pos += (length + 3) // 4 * 4
        if keep:
            out[name] = [i for i in items if i]
    return out


def _csa(ds) -> dict[str, list[str]]:
    elem = ds.get(_CSA_IMAGE_HEADER)
    if elem is None:
        return {}
    try:
        return parse_csa(elem.value, _CSA_NAMES)
    except (ValueError, struct.error):
        return {}


def number_of_tiles(ds) -> int | None:
    """NumberOfImagesInMosaic from (0019,100A) or from the CSA image header."""
    elem = ds.get(_N_MOSAIC)
    if elem is not None:
        value = elem.value
        if isinstance(value, bytes):
            value = struct.unpack("<H", value[:2])[0] if len(value) >= 2 else None
        try:
            if value is not None and int(value) > 0:
                return int(value)
        except (TypeError, ValueError):
            pass
    items = _csa(ds).get("NumberOfImagesInMosaic")
    if items:
        try:
            return int(float(items[0]))
        except ValueError:
            return None
    return None


def slice_normal_vector(ds, iop) -> np.ndarray | None:
    """The CSA ``SliceNormalVector``, or the cross product of IOP's two directions."""
    items = _csa(ds).get("SliceNormalVector")
    if items and len(items) == 3:
        try:
            v = np.array([float(x) for x in items])
            n = np.linalg.norm(v)
            if n > 0.5:
                return v / n
        except ValueError:
            pass
    if iop is None:
        return None
    r, c = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    v = np.cross(r, c)
    return v / np.linalg.norm(v)


def tile_positions(ipp, iop, pixel_spacing, mosaic_shape, tile_shape, n_tiles, spacing, normal):
    """Per-tile ImagePositionPatient (LPS, mm) as an ``(n_tiles, 3)`` array."""
    ipp = np.asarray(ipp, float)
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    dr, dc = float(pixel_spacing[0]), float(pixel_spacing[1])
    (R, C), (r, c) = mosaic_shape, tile_shape
    first = ipp + row_dir * dc * (C - c) / 2.0 + col_dir * dr * (R - r) / 2.0
    steps = np.arange(n_tiles, dtype=float)[:, None] * spacing
    return first[None, :] + steps * np.asarray(normal, float)[None, :]


def expand(ds, base: dict) -> list[Frame]:
    """One :class:`~medcore.dicom.frame.Frame` per mosaic tile with its own position."""
    n = number_of_tiles(ds) or 0
    k = math.ceil(math.sqrt(n))
    R, C = base["rows"], base["cols"]
    if R % k or C % k:
        raise UnsupportedDicomError(
            base["path"], f"MOSAIC of {R}x{C} pixels cannot hold a {k}x{k} grid of {n} tiles", "bad_mosaic"
        )
    r, c = R // k, C // k
    fields = dict(base, rows=r, cols=c, is_mosaic=True, mosaic_tiles_per_row=k)
    iop, ipp, ps = base["iop"], base["ipp"], base["pixel_spacing"]
    spacing = base["spacing_between_slices"] or base["slice_thickness"]
    positions = None
    if iop is not None and ipp is not None and ps is not None and spacing:
        normal = slice_normal_vector(ds, iop)
        positions = tile_positions(ipp, iop, ps, (R, C), (r, c), n, spacing, normal)
    proto = Frame(**fields)
    out = []
    for i in range(n):
        pos = tuple(float(v) for v in positions[i]) if positions is not None else None
        out.append(with_changes(proto, frame_index=i, ipp=pos))
    return out


# ------------------------------------------------------------------------------ UIH VFRAME grids

_UIH_GRID_SEQUENCE = 0x00651051
_UIH_TILE_SIZE = 0x00651004


def is_uih_grid(ds) -> bool:
    """True for a United Imaging "VFRAME" grid: tiles with their own positions in (0065,1051)."""
    image_type = ds.get("ImageType") or ()
    if isinstance(image_type, str):
        image_type = image_type.split("\\")
    if "VFRAME" not in {str(v).upper() for v in image_type}:
        return False
    elem = ds.get(_UIH_GRID_SEQUENCE)
    return elem is not None and elem.VR == "SQ" and len(elem.value) > 1


def _uih_tile_shape(ds) -> tuple[int, int] | None:
    elem = ds.get(_UIH_TILE_SIZE)
    if elem is not None:
        text = elem.value.decode("latin-1") if isinstance(elem.value, bytes) else str(elem.value)
        parts = text.strip("\x00 ").split("*")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            return int(parts[0]), int(parts[1])
    return None


def expand_uih(ds, base: dict) -> list[Frame]:
    """One Frame per UIH grid tile; each tile's position comes from its own sequence item."""

    items = list(ds[_UIH_GRID_SEQUENCE].value)
    shape = _uih_tile_shape(ds)
    R, C = base["rows"], base["cols"]
    if shape is None or shape[0] <= 0 or shape[1] <= 0 or R % shape[0] or C % shape[1]:
        raise UnsupportedDicomError(
            base["path"], f"UIH grid of {R}x{C} pixels has no usable tile size ({shape})", "bad_mosaic"
        )
    r, c = shape
    kr, kc = R // r, C // c
    if len(items) > kr * kc:
        raise UnsupportedDicomError(
            base["path"], f"UIH grid lists {len(items)} tiles but {kr}x{kc} fit in the image", "bad_mosaic"
        )
    fields = dict(base, rows=r, cols=c, is_mosaic=True, mosaic_tiles_per_row=kc, mosaic_tiles_per_col=kr)
    proto = Frame(**fields)
    return [
        with_changes(proto, frame_index=i, ipp=as_floats(item.get("ImagePositionPatient"), 3))
        for i, item in enumerate(items)
    ]
