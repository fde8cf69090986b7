"""Pixel loading for :class:`~medcore.dicom.frame.Frame` lists, and rescaling to real values.

Native (uncompressed) little and big endian data is read with ``np.fromfile`` at the offset found
while reading the header: no DICOM parsing and no extra copy. Everything else (deflate, RLE, JPEG
baseline / lossless, JPEG-LS, JPEG 2000) goes through pydicom 3's decoder plugins, restricted to
permissively licensed back ends (gdcm, pylibjpeg-openjpeg, pylibjpeg-rle, pyjpegls, Pillow):
pylibjpeg-libjpeg (GPLv3) is never used.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import UID

from medcore.dicom.frame import DecodeError, Frame

#: Plugin preference per transfer syntax; names are pydicom 3 decoder plugin names.
_PREFERRED = ("pylibjpeg", "pyjpegls", "gdcm", "pydicom", "pillow")
#: Syntaxes whose "pylibjpeg" plugin is pylibjpeg-libjpeg (GPLv3): never used.
_GPL_PYLIBJPEG = {
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", ""}


def stored_dtype(frame: Frame) -> np.dtype:
    """Numpy dtype of a frame's stored values (native byte order)."""
    bits = frame.bits_allocated
    if bits not in (8, 16, 32):
        raise DecodeError(frame.path, f"BitsAllocated={bits} is not supported", "unsupported_image")
    kind = "i" if frame.pixel_representation == 1 else "u"
    return np.dtype(f"{kind}{bits // 8}")


def allowed_plugins(tsuid: str) -> list[str]:
    """pydicom decoder plugins usable for ``tsuid`` here, best first (GPL back ends excluded)."""
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        return []
    available = set(decoder.available_plugins)
    if tsuid in _GPL_PYLIBJPEG:
        available.discard("pylibjpeg")
    return [p for p in _PREFERRED if p in available] + sorted(available - set(_PREFERRED))


def _syntax_name(tsuid: str) -> str:
    try:
        return f"{UID(tsuid).name} ({tsuid})"
    except Exception:  # pragma: no cover
        return tsuid


def mask_bits(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """In place: clear bits above ``bits_stored`` (unsigned) or sign-extend from it (signed)."""
    width = arr.dtype.itemsize * 8
    if bits_stored <= 0 or bits_stored >= width or arr.dtype.kind not in "iu":
        return arr
    if signed:
        shift = width - bits_stored
        view = arr.view(np.dtype(f"i{arr.dtype.itemsize}"))
        np.left_shift(view, shift, out=view)
        np.right_shift(view, shift, out=view)
    else:
        view = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
        np.bitwise_and(view, (1 << bits_stored) - 1, out=view)
    return arr


def _native(frame: Frame, n_stored: int, shape: tuple[int, ...]) -> np.ndarray:
    """All stored frames of a native file: ``(n_stored, *shape)`` read straight from disk."""
    dtype = stored_dtype(frame)
    if frame.big_endian:
        dtype = dtype.newbyteorder(">")
    count = n_stored * int(np.prod(shape))
    try:
        arr = np.fromfile(frame.path, dtype=dtype, count=count, offset=frame.pixel_offset)
    except (OSError, ValueError) as exc:
        raise DecodeError(frame.path, f"cannot read pixel data ({exc})") from exc
    if arr.size < count:
        raise DecodeError(
            frame.path, f"pixel data is truncated ({arr.size} of {count} values); re-copy the file", "truncated"
        )
    if frame.big_endian:
        arr = arr.astype(dtype.newbyteorder("="))
    if frame.samples_per_pixel > 1 and frame.planar_configuration == 1:
        r, c, s = shape
        return arr.reshape(n_stored, s, r, c).transpose(0, 2, 3, 1)
    return arr.reshape((n_stored,) + shape)


def _via_pydicom(frame: Frame, indices: list[int], n_stored: int) -> np.ndarray:
    """Decode the stored frames ``indices`` of a file through pydicom's plugins."""
    try:
        ds = pydicom.dcmread(frame.path, force=True)
    except Exception as exc:
        raise DecodeError(frame.path, f"cannot be re-read for decoding ({exc})") from exc
    tsuid = str(ds.file_meta.get("TransferSyntaxUID", "")) if hasattr(ds, "file_meta") else ""
    tsuid = tsuid or frame.transfer_syntax_uid
    if tsuid in _NATIVE or tsuid == "1.2.840.10008.1.2.1.99":
        plugins = [""]
    else:
        plugins = allowed_plugins(tsuid)
        if not plugins:
            raise DecodeError(
                frame.path,
                f"no decoder is installed for transfer syntax {_syntax_name(tsuid)}; install python-gdcm, "
                "pylibjpeg-openjpeg, pylibjpeg-rle or pyjpegls, or re-export the study uncompressed",
                "no_decoder",
            )
    errors = []
    options: dict[str, Any] = {"as_rgb": True}
    for plugin in plugins:
        try:
            decoder = get_decoder(tsuid)
            if len(indices) == n_stored:
                arr, _ = decoder.as_array(ds, decoding_plugin=plugin, **options)
                return arr if n_stored > 1 else arr[None]
            parts = [decoder.as_array(ds, index=i, decoding_plugin=plugin, **options)[0] for i in indices]
            return np.stack(parts)
        except Exception as exc:  # try the next plugin, report all failures
            errors.append(f"{plugin or 'native'}: {exc}")
    raise DecodeError(
        frame.path,
        f"cannot decode {_syntax_name(tsuid)} ({'; '.join(errors)}); the file may be damaged",
    )


def _file_frames(frame: Frame, wanted: list[int]) -> tuple[np.ndarray, list[int]]:
    """Decoded stored frames of one file and, for each wanted Frame index, its row in the array."""
    stored_shape: tuple[int, ...]
    if frame.is_mosaic:
        kr, kc = frame.mosaic_tiles_per_col or frame.mosaic_tiles_per_row, frame.mosaic_tiles_per_row
        n_stored, stored_shape = 1, (frame.rows * kr, frame.cols * kc)
    else:
        n_stored, stored_shape = frame.number_of_frames, frame.shape
    if frame.samples_per_pixel > 1:
        stored_shape = (stored_shape[0], stored_shape[1], frame.samples_per_pixel)
    if frame.pixel_offset >= 0 and frame.transfer_syntax_uid in _NATIVE:
        arr, rows = _native(frame, n_stored, stored_shape), wanted
    elif frame.is_mosaic or len(set(wanted)) * 2 > n_stored:
        arr, rows = _via_pydicom(frame, list(range(n_stored)), n_stored), wanted
    else:
        unique = sorted(set(wanted))
        arr = _via_pydicom(frame, unique, n_stored)
        pos = {f: i for i, f in enumerate(unique)}
        rows = [pos[f] for f in wanted]
    if arr.shape[1:] != stored_shape:
        raise DecodeError(
            frame.path, f"decoded pixel array has shape {arr.shape[1:]}, header says {stored_shape}"
        )
    if frame.is_mosaic:
        r, c = frame.rows, frame.cols
        tiles = arr[0].reshape(kr, r, kc, c).swapaxes(1, 2).reshape(kr * kc, r, c)
        return tiles, wanted
    return arr, rows


def _direct_read_ok(frame: Frame, dtype: np.dtype) -> bool:
    """Native little-endian, interleaved, not a mosaic, stored type equals the output type."""
    return (
        frame.pixel_offset >= 0
        and frame.transfer_syntax_uid in _NATIVE
        and not frame.big_endian
        and not frame.is_mosaic
        and (frame.samples_per_pixel == 1 or frame.planar_configuration == 0)
        and stored_dtype(frame) == dtype
    )


def _read_into(frame: Frame, wanted: list[int], out: np.ndarray, positions: list[int]) -> None:
    """Read the wanted frames of a native file straight into ``out`` (no intermediate copy)."""
    nbytes = out[0].nbytes
    try:
        with open(frame.path, "rb", buffering=0) as fh:
            for index, pos in zip(wanted, positions):
                fh.seek(frame.pixel_offset + index * nbytes)
                view = memoryview(out[pos]).cast("B")
                got = fh.readinto(view)
                if got != nbytes:
                    raise DecodeError(
                        frame.path,
                        f"pixel data is truncated (frame {index}: {got} of {nbytes} bytes); re-copy the file",
                        "truncated",
                    )
    except OSError as exc:
        raise DecodeError(frame.path, f"cannot read pixel data ({exc.strerror or exc})") from exc


def load_pixels(frames: Sequence[Frame]) -> np.ndarray:
    """Stored values of ``frames`` as ``(n, rows, cols)`` (or ``(n, rows, cols, 3)`` for RGB).

    BitsStored is honoured (high bits masked, signed data sign-extended); no rescaling.
    Each file is read and decoded once. Raises :class:`DecodeError` naming the file.
    """
    if not frames:
        raise ValueError("load_pixels needs at least one frame")
    first = frames[0]
    shape, dtype = first.shape, stored_dtype(first)
    if first.samples_per_pixel > 1:
        dtype = np.dtype(np.uint8) if first.bits_allocated == 8 else dtype
    for f in frames:
        if f.shape != shape or stored_dtype(f) != stored_dtype(first):
            raise ValueError(
                f"frames differ in size or type: {first.path} is {shape} {stored_dtype(first)}, "
                f"{f.path} is {f.shape} {stored_dtype(f)}; split the series before loading"
            )
    out = np.empty((len(frames),) + shape, dtype=dtype)
    by_file: OrderedDict[tuple, list[int]] = OrderedDict()
    for i, f in enumerate(frames):
        by_file.setdefault((f.path, f.is_mosaic), []).append(i)
    for positions in by_file.values():
        frame = frames[positions[0]]
        wanted = [frames[p].frame_index for p in positions]
        if _direct_read_ok(frame, dtype):
            _read_into(frame, wanted, out, positions)
            continue
        try:
            arr, rows = _file_frames(frame, wanted)
            block = arr[rows] if rows != list(range(len(arr))) else arr
            if block.dtype != dtype:
                if block.dtype.kind in "iu" and np.dtype(dtype).kind in "iu":
                    block = block.astype(dtype, copy=False)
                else:
                    raise DecodeError(frame.path, f"decoded {block.dtype}, expected {dtype}")
            out[positions] = block
        except DecodeError:
            raise
        except (IndexError, ValueError, MemoryError) as exc:
            raise DecodeError(frame.path, f"cannot extract frames {wanted[:5]}... ({exc})") from exc
    if first.samples_per_pixel == 1:
        mask_bits(out, first.bits_stored, first.pixel_representation == 1)
    return out


def to_real_values(pixels: np.ndarray, frames: Sequence[Frame], *, in_place: bool = False) -> np.ndarray:
    """Real values ``stored * slope + intercept`` per frame (first axis of ``pixels``).

    The result keeps an integer dtype when every slope is 1, every intercept is integral and the
    result fits in the stored type or int16/int32; otherwise float32. ``in_place=True`` lets an
    integer result that fits the stored type overwrite ``pixels`` (a fresh buffer of 500 CT slices
    costs more to allocate than to fill).
    """
    n = pixels.shape[0]
    if len(frames) != n:
        raise ValueError(f"{n} pixel frames but {len(frames)} Frame records")
    slopes = np.array([f.slope for f in frames], dtype=np.float64)
    inters = np.array([f.intercept for f in frames], dtype=np.float64)
    uniform = bool(np.all(slopes == slopes[0]) and np.all(inters == inters[0]))
    if uniform and np.all(slopes == 1.0) and np.all(inters == np.round(inters)) and pixels.dtype.kind in "iu":
        icpt = int(inters[0])
        if icpt == 0:
            return pixels
        lo = int(pixels.min()) + icpt if pixels.size else 0
        hi = int(pixels.max()) + icpt if pixels.size else 0
        for dt in (pixels.dtype, np.dtype(np.int16), np.dtype(np.int32), np.dtype(np.int64)):
            info = np.iinfo(dt)
            if info.min <= lo and hi <= info.max:
                out = pixels if in_place and dt == pixels.dtype else pixels.astype(dt, copy=True)
                out += dt.type(icpt)
                return out
    out = pixels.astype(np.float32)
    expand = (slice(None),) + (None,) * (pixels.ndim - 1)
    if uniform:
        if slopes[0] != 1.0:
            out *= np.float32(slopes[0])
        if inters[0] != 0.0:
            out += np.float32(inters[0])
        return out
    out *= slopes.astype(np.float32)[expand]
    out += inters.astype(np.float32)[expand]
    return out
