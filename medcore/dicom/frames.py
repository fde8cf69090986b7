"""One 2D image plane per :class:`Frame`: the unit that DICOM ingestion groups, sorts and decodes.

``read_frames`` reads a file's header only and expands Siemens MOSAIC files and enhanced
multi-frame files into one :class:`Frame` per plane. ``load_pixels`` decodes the stored values of
many frames (each file read once); ``to_real_values`` applies RescaleSlope/Intercept.

Error codes (``exc.code``; ``exc.path`` and ``exc.reason`` name the file and the cause):
``empty_file``, ``not_dicom``, ``unreadable`` (:class:`NotDicomError`); ``truncated``,
``no_pixel_data``, ``unsupported_sop_class`` (SR, RTSTRUCT, PR, KO, SEG, DICOMDIR ...),
``unsupported_image`` (float pixels, BitsAllocated 1, no Rows/Columns), ``bad_mosaic``,
``inconsistent_frames`` (:class:`UnsupportedDicomError`); ``decode_failed``, ``no_decoder``,
``truncated`` (:class:`DecodeError`, raised by ``load_pixels``).

Frames of one file share ``sop_instance_uid``; ``(path, frame_index)`` identifies a frame.
Colour data (RGB, YBR_*) is returned as RGB ``(n, rows, cols, 3)`` uint8 whatever
``photometric`` says; PALETTE COLOR is returned as palette indices.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medcore.dicom import rawheader


class DicomFrameError(Exception):
    """Base of the errors raised for one file; ``code`` is machine-readable, ``path`` names it."""

    code = "dicom_error"

    def __init__(self, path, reason: str, code: str | None = None):
        self.path = Path(path)
        self.reason = reason
        if code is not None:
            self.code = code
        super().__init__(f"{self.path}: {reason}")


class NotDicomError(DicomFrameError):
    """The file is not DICOM at all (or is empty/truncated before any element)."""

    code = "not_dicom"


class UnsupportedDicomError(DicomFrameError):
    """The file is DICOM but holds no usable image (SR, RTSTRUCT, no PixelData, ...)."""

    code = "unsupported"


class DecodeError(DicomFrameError):
    """The pixel data of a file could not be decoded."""

    code = "decode_failed"


@dataclass(frozen=True)
class Frame:
    """One 2D image plane of a DICOM file; ``frame_index`` is its index inside the file."""

    path: Path
    frame_index: int
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    series_number: int | None
    modality: str
    image_type: tuple[str, ...]
    rows: int
    cols: int
    samples_per_pixel: int
    photometric: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    iop: tuple[float, ...] | None
    ipp: tuple[float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    slope: float
    intercept: float
    echo_number: int | None
    echo_time: float | None
    temporal_position: int | None
    acquisition_number: int | None
    trigger_time: float | None
    instance_number: int | None
    acquisition_time: str | None
    diffusion_bvalue: float | None
    diffusion_gradient: tuple[float, float, float] | None
    is_localizer: bool
    transfer_syntax_uid: str
    header: dict = field(default_factory=dict, compare=False, hash=False)
    #: Frames stored in the file (>1 for multi-frame); a mosaic file has 1 stored frame.
    number_of_frames: int = 1
    #: Mosaic tiling: tiles per row of the stored image, 0 when not a mosaic.
    mosaic_tiles_per_row: int = 0
    #: Tile rows of a mosaic grid when it differs from ``mosaic_tiles_per_row`` (UIH grids), else 0.
    mosaic_tiles_per_col: int = 0
    #: True for mosaic tiles (Siemens MOSAIC, UIH VFRAME grids): the stored image is a tile grid.
    is_mosaic: bool = False
    #: Number of the frame's stack dimension values (enhanced MR), empty otherwise.
    dimension_index: tuple[int, ...] = ()
    #: Planar configuration for colour data (0 = interleaved, 1 = planar).
    planar_configuration: int = 0
    #: Byte offset of the native pixel data value in the file, -1 when unknown or encapsulated.
    pixel_offset: int = field(default=-1, compare=False)
    #: Big endian native pixel data (transfer syntax 1.2.840.10008.1.2.2).
    big_endian: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of this frame's decoded array: ``(rows, cols)`` or ``(rows, cols, samples)``."""
        if self.samples_per_pixel > 1:
            return (self.rows, self.cols, self.samples_per_pixel)
        return (self.rows, self.cols)


# --------------------------------------------------------------------------------------------
# Header reading

#: SOP classes that never hold a convertible image (SR, RTSTRUCT, PR, KO, plans, waveforms ...).
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key objects
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, spatial registration, fiducials, SEG
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects except RT Image and RT Dose
    "1.2.840.10008.1.3.10",  # media storage directory (DICOMDIR)
)
#: RT Image and RT Dose hold pixel data on a patient grid: they are images.
_RT_IMAGE_SOPS = {"1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.2"}
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LOCALIZER_WORDS = {"LOCALIZER", "SCOUT", "SCANOGRAM", "TOPOGRAM", "SURVEY", "LOCALISER"}

#: Acquisition physics copied into ``Frame.header`` (no free text, no identifiers, no dates).
HEADER_KEYWORDS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
    "MagneticFieldStrength", "ImagingFrequency", "ImagedNucleus", "RepetitionTime", "EchoTime",
    "InversionTime", "FlipAngle", "EchoTrainLength", "PixelBandwidth", "ScanningSequence",
    "SequenceVariant", "ScanOptions", "MRAcquisitionType", "SequenceName", "AcquisitionMatrix",
    "InPlanePhaseEncodingDirection", "PercentPhaseFieldOfView", "PercentSampling",
    "NumberOfAverages", "SliceThickness", "SpacingBetweenSlices", "KVP", "ConvolutionKernel",
    "ExposureTime", "XRayTubeCurrent", "Exposure", "ReconstructionDiameter",
    "SpiralPitchFactor", "GantryDetectorTilt", "TableHeight", "BodyPartExamined",
    "PatientPosition", "ReceiveCoilName", "TransmitCoilName", "PhotometricInterpretation",
    "BitsStored", "RescaleType", "ImageType",
)

_FRAME_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber",
    "Modality", "ImageType", "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
    "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "ImagerPixelSpacing",
    "SliceThickness", "SpacingBetweenSlices", "RescaleSlope", "RescaleIntercept",
    "EchoNumbers", "EchoTime", "TemporalPositionIdentifier", "AcquisitionNumber", "TriggerTime",
    "InstanceNumber", "AcquisitionTime", "DiffusionBValue", "DiffusionGradientOrientation",
    "NumberOfFrames", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "GridFrameOffsetVector", "FrameIncrementPointer",
)
_PRIVATE_TAGS = (
    0x0019100A,  # Siemens NumberOfImagesInMosaic
    0x0019100C,  # Siemens B_value
    0x0019100E,  # Siemens DiffusionGradientDirection
    0x00291010,  # Siemens CSA image header
    0x00190010, 0x00290010,  # private creators
    0x00100020,  # PatientID: only for read_frames_and_patient, never stored on a Frame
    0x00650010, 0x00651004, 0x00651009, 0x00651037, 0x00651051,  # UIH grid, b-value, gradient
)


def _specific_tags() -> list[int]:
    from pydicom.datadict import tag_for_keyword

    tags = {tag_for_keyword(k) for k in _FRAME_KEYWORDS + HEADER_KEYWORDS}
    tags.update(_PRIVATE_TAGS)
    tags.discard(None)
    return sorted(tags)


#: Use :mod:`medcore.dicom.rawheader` before pydicom (tests switch it off to cross-check).
USE_FAST_HEADER = True
_SPECIFIC_TAGS: list[int] | None = None
_WANTED: frozenset[int] = frozenset()
#: Functional group sequences: files holding them are read with pydicom.
_FALLBACK_TAGS = frozenset({0x52009229, 0x52009230, 0x00651051})


def _first(value):
    """First item of a multi-valued element, or the value itself."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return value[0] if len(value) else None
    return value


def as_float(value) -> float | None:
    """A DS/FD/IS value (or its first item) as float, None when absent or unparsable."""
    value = _first(value)
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_int(value) -> int | None:
    """An IS/US value (or its first item) as int, None when absent or unparsable."""
    value = _first(value)
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def as_floats(value, n: int) -> tuple[float, ...] | None:
    """Exactly ``n`` finite floats from a multi-valued element, else None."""
    if value is None:
        return None
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if len(out) != n or not all(np.isfinite(out)):
        return None
    return out


def _str(value) -> str:
    if value is None:
        return ""
    return str(value).strip()


def _json_value(value):
    """A pydicom value as a JSON-friendly scalar or list (None when not representable)."""
    if value is None or value == "":
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    if type(value).__name__ == "MultiValue" or isinstance(value, (list, tuple)):
        items = [_json_value(v) for v in value]
        return items if all(i is not None for i in items) else None
    if isinstance(value, (int, float, str)):
        if isinstance(value, float) or type(value).__name__ in ("DSfloat", "DSdecimal"):
            return float(value)
        if type(value).__name__ == "IS" or isinstance(value, int):
            return int(value)
        return str(value).strip()
    try:  # PersonName and similar never belong here; other types become strings
        return str(value).strip()
    except Exception:  # pragma: no cover - defensive
        return None


def acquisition_header(ds) -> dict:
    """The non-PHI acquisition attributes of ``ds`` (see :data:`HEADER_KEYWORDS`)."""
    out = {}
    for kw in HEADER_KEYWORDS:
        value = ds.get(kw)
        value = _json_value(value)
        if value is not None:
            out[kw] = value
    return out


_HEADER_TAGS: tuple[int, ...] = ()


class LazyHeader(Mapping):
    """:func:`acquisition_header` of a fast-read header, computed on first use.

    Converting ~40 values per file is a fifth of a header scan, yet conversion reads the
    header of one frame per series. Only the raw elements of :data:`HEADER_KEYWORDS` are kept
    (no identifiers); a pickled copy (a worker's result) is the computed plain dict.
    """

    __slots__ = ("_source", "_data")

    def __init__(self, source: rawheader.RawHeader):
        global _HEADER_TAGS
        if not _HEADER_TAGS:
            _HEADER_TAGS = tuple(rawheader._tag(kw) for kw in HEADER_KEYWORDS)
        elements = source._elements
        self._source = rawheader.RawHeader(
            {t: elements[t] for t in _HEADER_TAGS if t in elements}, source.transfer_syntax_uid)
        self._data: dict | None = None

    def _dict(self) -> dict:
        if self._data is None:
            self._data = acquisition_header(self._source)
            self._source = None
        return self._data

    def __getitem__(self, key):
        return self._dict()[key]

    def __iter__(self):
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return repr(self._dict())

    def __reduce__(self):
        return dict, (self._dict(),)


def _check_start(path: Path, head: bytes) -> None:
    """Raise :class:`NotDicomError` unless ``head`` starts like DICOM (with or without preamble)."""
    if not head:
        raise NotDicomError(path, "is empty (0 bytes); remove it or re-export the study", "empty_file")
    if len(head) >= 132 and head[128:132] == b"DICM":
        return
    if len(head) >= 8:
        # No preamble: the first element must be a group 0002 (meta), 0008 or ACR-NEMA 0000 one.
        group_le = int.from_bytes(head[0:2], "little")
        group_be = int.from_bytes(head[0:2], "big")
        if group_le in (0x0002, 0x0008) or group_be == 0x0008:
            return
        if head[0:8] == b"\x00\x00\x00\x00\x04\x00\x00\x00":  # ACR-NEMA (0000,0000) group length
            return
    raise NotDicomError(
        path,
        "is not DICOM (no 'DICM' marker and no DICOM element at the start); "
        "skip it or check that it was exported as DICOM",
    )


def _read_header(path: Path):
    """Header-only dataset plus (pixel tag, value offset, value length) or None when no pixels.

    The file is opened once: its first block serves the DICOM check and the fast parser; only
    files the fast parser declines are read again, by pydicom.
    """
    global _SPECIFIC_TAGS, _WANTED
    if _SPECIFIC_TAGS is None:
        _SPECIFIC_TAGS = _specific_tags()
        _WANTED = frozenset(_SPECIFIC_TAGS) | {0x00080005}
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(rawheader.FIRST_CHUNK)
            _check_start(path, head)
            try:
                fast = rawheader.parse_open(fh, head, size, _WANTED, _FALLBACK_TAGS) if USE_FAST_HEADER else None
            except rawheader.Truncated as exc:
                raise UnsupportedDicomError(
                    path, f"is truncated ({exc}); re-copy or re-export the file", "truncated"
                ) from exc
    except OSError as exc:
        raise NotDicomError(path, f"cannot be read ({exc.strerror}); check permissions", "unreadable") from exc
    if fast is not None:
        ds, pixel, size = fast
        return ds, ds.transfer_syntax_uid, pixel, size
    import pydicom
    from pydicom.errors import InvalidDicomError

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True, specific_tags=_SPECIFIC_TAGS)
            pixel = None
            pos = fh.tell()
            tag_bytes = fh.read(12)
    except EOFError as exc:
        raise UnsupportedDicomError(path, f"is truncated inside its header ({exc}); re-copy the file",
                                    "truncated") from exc
    except (InvalidDicomError, OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise NotDicomError(path, f"header cannot be parsed ({exc}); the file may be damaged") from exc
    except Exception as exc:  # pydicom on garbage may fail in many ways; one bad file must not stop a batch
        raise NotDicomError(
            path, f"header cannot be parsed ({type(exc).__name__}: {exc}); the file may be damaged"
        ) from exc
    meta = getattr(ds, "file_meta", None)
    tsuid = _str(meta.get("TransferSyntaxUID")) if meta is not None else ""
    if tsuid == "1.2.840.10008.1.2.1.99":  # deflated: positions refer to the inflated stream
        pixel = _deflated_pixel_tag(path)
        return ds, tsuid, pixel, size
    if len(tag_bytes) >= 8:
        big = tsuid == "1.2.840.10008.1.2.2"
        order = "big" if big else "little"
        tag = (int.from_bytes(tag_bytes[0:2], order) << 16) | int.from_bytes(tag_bytes[2:4], order)
        if tag in _PIXEL_TAGS:
            implicit = tsuid == "1.2.840.10008.1.2" or (not tsuid and not tag_bytes[4:6].isalpha())
            if implicit:
                length = int.from_bytes(tag_bytes[4:8], order)
                offset = pos + 8
            else:
                length = int.from_bytes(tag_bytes[8:12], order)
                offset = pos + 12
            pixel = (tag, offset, length)
    return ds, tsuid, pixel, size


def _deflated_pixel_tag(path: Path):
    """Pixel element of a deflated file: (tag, -1, -1) when present (offsets do not apply)."""
    import pydicom

    ds = pydicom.dcmread(path, force=True, defer_size=1024)
    for tag in _PIXEL_TAGS:
        if tag in ds:
            return (tag, -1, -1)
    return None


def _is_localizer(image_type: tuple[str, ...]) -> bool:
    return any(w in _LOCALIZER_WORDS for w in image_type)


def _image_type(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split("\\")
    return tuple(_str(v).upper() for v in value)


def _time_only(value) -> str | None:
    """HHMMSS.FFFFFF from a TM or DT value, dropping any date (dates may identify a patient)."""
    text = _str(value)
    if not text:
        return None
    if len(text) >= 14 and text[:8].isdigit():  # DT: YYYYMMDDHHMMSS...
        text = text[8:]
    return text.split("+")[0].split("-")[0] or None


def base_fields(ds, path: Path, tsuid: str) -> dict:
    """Frame fields common to all frames of one file, from the top-level dataset."""
    image_type = _image_type(ds.get("ImageType"))
    spacing = as_floats(ds.get("PixelSpacing"), 2) or as_floats(ds.get("ImagerPixelSpacing"), 2)
    slope = as_float(ds.get("RescaleSlope"))
    intercept = as_float(ds.get("RescaleIntercept"))
    gradient = as_floats(ds.get("DiffusionGradientOrientation"), 3)
    bvalue = as_float(ds.get("DiffusionBValue"))
    if bvalue is None and 0x0019100C in ds and _is_siemens(ds):
        bvalue = as_float(_private_number(ds[0x0019100C]))
    if gradient is None and 0x0019100E in ds and _is_siemens(ds):
        gradient = as_floats(_private_numbers(ds[0x0019100E]), 3)
    return dict(
        path=path,
        frame_index=0,
        sop_instance_uid=_str(ds.get("SOPInstanceUID")),
        sop_class_uid=_str(ds.get("SOPClassUID")),
        study_uid=_str(ds.get("StudyInstanceUID")),
        series_uid=_str(ds.get("SeriesInstanceUID")),
        series_number=as_int(ds.get("SeriesNumber")),
        modality=_str(ds.get("Modality")).upper(),
        image_type=image_type,
        rows=as_int(ds.get("Rows")) or 0,
        cols=as_int(ds.get("Columns")) or 0,
        samples_per_pixel=as_int(ds.get("SamplesPerPixel")) or 1,
        photometric=_str(ds.get("PhotometricInterpretation")).upper() or "MONOCHROME2",
        bits_allocated=as_int(ds.get("BitsAllocated")) or 0,
        bits_stored=as_int(ds.get("BitsStored")) or as_int(ds.get("BitsAllocated")) or 0,
        pixel_representation=as_int(ds.get("PixelRepresentation")) or 0,
        iop=as_floats(ds.get("ImageOrientationPatient"), 6),
        ipp=as_floats(ds.get("ImagePositionPatient"), 3),
        pixel_spacing=spacing,
        slice_thickness=as_float(ds.get("SliceThickness")),
        spacing_between_slices=as_float(ds.get("SpacingBetweenSlices")),
        slope=1.0 if slope is None or slope == 0.0 else slope,
        intercept=0.0 if intercept is None else intercept,
        echo_number=as_int(ds.get("EchoNumbers")),
        echo_time=as_float(ds.get("EchoTime")),
        temporal_position=as_int(ds.get("TemporalPositionIdentifier")),
        acquisition_number=as_int(ds.get("AcquisitionNumber")),
        trigger_time=as_float(ds.get("TriggerTime")),
        instance_number=as_int(ds.get("InstanceNumber")),
        acquisition_time=_time_only(ds.get("AcquisitionTime")),
        diffusion_bvalue=bvalue,
        diffusion_gradient=gradient,
        is_localizer=_is_localizer(image_type),
        transfer_syntax_uid=tsuid,
        header=LazyHeader(ds) if isinstance(ds, rawheader.RawHeader) else acquisition_header(ds),
        planar_configuration=as_int(ds.get("PlanarConfiguration")) or 0,
        big_endian=tsuid == "1.2.840.10008.1.2.2",
    )


def _is_siemens(ds) -> bool:
    return "SIEMENS" in _str(ds.get("Manufacturer")).upper()


def _private_number(elem):
    """Value of a private numeric element that may be stored as raw bytes (UN)."""
    value = elem.value
    if isinstance(value, bytes):
        text = value.decode("latin-1").strip("\x00 ")
        if text and all(ch in "0123456789+-.eE\\ " for ch in text):
            return as_float(text.split("\\")[0])
        if elem.VR in ("UN", "OB") and len(value) in (4, 8):
            fmt = "<i" if len(value) == 4 else "<d"
            try:
                return struct.unpack(fmt, value)[0]
            except struct.error:
                return None
        try:
            return float(value.decode("ascii", "ignore").strip("\x00 ").split("\\")[0])
        except ValueError:
            return None
    return value


def _private_numbers(elem):
    value = elem.value
    if isinstance(value, bytes):
        if len(value) % 8 == 0 and len(value) >= 24:
            return tuple(np.frombuffer(value, "<f8").tolist())
        return None
    return value


def with_changes(frame: Frame, **changes) -> Frame:
    """A copy of ``frame`` with some fields changed (a fast ``dataclasses.replace``)."""
    new = object.__new__(Frame)
    new.__dict__.update(frame.__dict__)
    new.__dict__.update(changes)
    return new


def read_frames(path, ds=None) -> list[Frame]:
    """Header-only read of one file into its frames (MOSAIC tiles and multi-frame expanded).

    ``ds`` may be an already-read dataset (header at least) to skip reading the file again; the
    pixel data offset is then unknown and decoding goes through pydicom.
    Raises :class:`NotDicomError` or :class:`UnsupportedDicomError` naming the file.
    """
    return _frames_and_header(Path(path), ds)[0]


def read_frames_and_patient(path) -> tuple[list[Frame], str]:
    """:func:`read_frames` plus the file's PatientID from the same single header read.

    The PatientID is PHI: it is returned for de-identification keys (per-patient date shift) and
    is never stored on a :class:`Frame`. Raises like :func:`read_frames`.
    """
    frames, ds = _frames_and_header(Path(path), None)
    return frames, _str(ds.get("PatientID"))


def _frames_and_header(path: Path, ds):
    from medcore.dicom import mosaic, multiframe

    if ds is None:
        ds, tsuid, pixel, size = _read_header(path)
    else:
        meta = getattr(ds, "file_meta", None)
        tsuid = _str(meta.get("TransferSyntaxUID")) if meta is not None else ""
        pixel = next(((t, -1, -1) for t in _PIXEL_TAGS if t in ds), None)
        size = -1
        if pixel is None and path.is_file():
            _, tsuid2, pixel, size = _read_header(path)
            tsuid = tsuid or tsuid2
    _check_image(ds, path, pixel, size)
    base = base_fields(ds, path, tsuid)
    tag, offset, length = pixel
    if tag != 0x7FE00010 or length == 0xFFFFFFFF or tsuid in _NOT_NATIVE:
        offset = -1
    base["pixel_offset"] = offset
    if multiframe.is_multiframe(ds):
        return multiframe.expand(ds, base), ds
    if mosaic.is_uih_grid(ds):
        return mosaic.expand_uih(ds, base), ds
    if mosaic.is_mosaic(ds):
        return mosaic.expand(ds, base), ds
    return [Frame(**base)], ds


_NOT_NATIVE = {"1.2.840.10008.1.2.1.99"}


def _check_image(ds, path: Path, pixel, size: int) -> None:
    """Raise :class:`UnsupportedDicomError` unless ``ds`` is an image we can convert."""
    sop = _str(ds.get("SOPClassUID"))
    if sop and sop not in _RT_IMAGE_SOPS and sop.startswith(_NON_IMAGE_SOP_PREFIXES):
        raise UnsupportedDicomError(
            path,
            f"SOP class {sop} ({_sop_name(sop)}) is not an image; it is not converted to a volume",
            "unsupported_sop_class",
        )
    if pixel is None:
        if not any(k in ds for k in ("Rows", "SOPClassUID", "StudyInstanceUID", "Modality")):
            raise NotDicomError(path, "holds no recognisable DICOM attributes; skip it")
        raise UnsupportedDicomError(
            path, "has no PixelData element, so there is no image to convert", "no_pixel_data"
        )
    tag, offset, length = pixel
    if tag != 0x7FE00010:
        raise UnsupportedDicomError(
            path, f"stores {_PIXEL_TAGS[tag]} (float pixels), which is not supported", "unsupported_image"
        )
    rows, cols = as_int(ds.get("Rows")) or 0, as_int(ds.get("Columns")) or 0
    bits = as_int(ds.get("BitsAllocated")) or 0
    if rows <= 0 or cols <= 0:
        raise UnsupportedDicomError(
            path, f"has Rows={rows} Columns={cols}; the image size is missing", "unsupported_image"
        )
    if bits not in (8, 16, 32):
        raise UnsupportedDicomError(
            path, f"has BitsAllocated={bits}; only 8, 16 and 32 bit images are supported", "unsupported_image"
        )
    if size >= 0 and offset >= 0:
        if length != 0xFFFFFFFF and offset + length > size:
            raise UnsupportedDicomError(
                path,
                f"is truncated: PixelData needs {length} bytes but only {max(size - offset, 0)} remain; "
                "re-export or re-copy the file",
                "truncated",
            )
        if length == 0xFFFFFFFF and offset + 8 > size:
            raise UnsupportedDicomError(path, "is truncated inside its compressed PixelData", "truncated")


def _sop_name(uid: str) -> str:
    try:
        from pydicom.uid import UID

        return UID(uid).name
    except Exception:  # pragma: no cover - unknown UID
        return "unknown"


def load_pixels(frames: Sequence[Frame]) -> np.ndarray:
    """Stored values of ``frames`` as ``(n, rows, cols)`` (or ``(n, rows, cols, 3)`` for RGB).

    BitsStored is honoured (high bits masked, signed data sign-extended); no rescaling.
    Each file is read once. Raises :class:`DecodeError` naming the file.
    """
    from medcore.dicom.decode import load_frame_pixels

    return load_frame_pixels(frames)


def to_real_values(pixels: np.ndarray, frames: Sequence[Frame]) -> np.ndarray:
    """Apply RescaleSlope/Intercept per frame; integer dtype kept when exact, else float32."""
    from medcore.dicom.decode import rescale

    return rescale(pixels, frames)
