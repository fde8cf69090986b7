"""Read DICOM headers into :class:`~medcore.dicom.frame.Frame` objects, one per 2D image plane.

``read_frames`` reads a file's header only and expands Siemens MOSAIC files (:mod:`.mosaic`) and
multi-frame files (:mod:`.multiframe`) into one Frame per plane; pixels are decoded later by
:func:`medcore.dicom.decode.load_pixels`. Files that hold no convertible image raise
:class:`~medcore.dicom.frame.NotDicomError` or :class:`~medcore.dicom.frame.UnsupportedDicomError`
with a machine-readable ``code`` (see :mod:`medcore.dicom.frame`).

Colour data (RGB, YBR_*) decode to RGB whatever ``photometric`` says; PALETTE COLOR to indices.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import Any, Literal

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from medcore.dicom import mosaic, multiframe, rawheader
from medcore.dicom.frame import Frame, NotDicomError, UnsupportedDicomError
from medcore.dicom.values import (
    HEADER_KEYWORDS,
    LazyHeader,
    acquisition_header,
    as_float,
    as_floats,
    as_int,
    as_text,
    image_type,
    is_localizer,
    non_finite,
    private_float,
    private_number,
    private_numbers,
    time_only,
    uid_problem,
)

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
    0x20010010, 0x20011003, 0x20050010, 0x200510B0, 0x200510B1, 0x200510B2,  # Philips b-value, gradient
    0x00430010, 0x00431039, 0x001910BB, 0x001910BC, 0x001910BD,  # GE b-value, gradient
)


def _specific_tags() -> list[int]:
    tags = {t for k in _FRAME_KEYWORDS + HEADER_KEYWORDS if (t := tag_for_keyword(k)) is not None}
    return sorted(tags.union(_PRIVATE_TAGS))


#: Use :mod:`medcore.dicom.rawheader` before pydicom (tests switch it off to cross-check).
USE_FAST_HEADER = True
_SPECIFIC_TAGS: list[int] | None = None
_WANTED: frozenset[int] = frozenset()
#: Functional group sequences: files holding them are read with pydicom.
_FALLBACK_TAGS = frozenset({0x52009229, 0x52009230, 0x00651051})


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
    tsuid = as_text(meta.get("TransferSyntaxUID")) if meta is not None else ""
    if tsuid == "1.2.840.10008.1.2.1.99":  # deflated: positions refer to the inflated stream
        pixel = _deflated_pixel_tag(path)
        return ds, tsuid, pixel, size
    if len(tag_bytes) >= 8:
        big = tsuid == "1.2.840.10008.1.2.2"
        order: Literal["big", "little"] = "big" if big else "little"
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
    ds = pydicom.dcmread(path, force=True, defer_size=1024)
    for tag in _PIXEL_TAGS:
        if tag in ds:
            return (tag, -1, -1)
    return None


def base_fields(ds, path: Path, tsuid: str) -> dict:
    """Frame fields common to all frames of one file, from the top-level dataset."""
    kinds = image_type(ds.get("ImageType"))
    spacing = as_floats(ds.get("PixelSpacing"), 2) or as_floats(ds.get("ImagerPixelSpacing"), 2)
    slope = as_float(ds.get("RescaleSlope"))
    intercept = as_float(ds.get("RescaleIntercept"))
    bvalue, gradient, in_image_frame = diffusion(ds)
    return dict(
        path=path,
        frame_index=0,
        sop_instance_uid=as_text(ds.get("SOPInstanceUID")),
        sop_class_uid=as_text(ds.get("SOPClassUID")),
        study_uid=as_text(ds.get("StudyInstanceUID")),
        series_uid=as_text(ds.get("SeriesInstanceUID")),
        series_number=as_int(ds.get("SeriesNumber")),
        modality=as_text(ds.get("Modality")).upper(),
        image_type=kinds,
        rows=as_int(ds.get("Rows")) or 0,
        cols=as_int(ds.get("Columns")) or 0,
        samples_per_pixel=as_int(ds.get("SamplesPerPixel")) or 1,
        photometric=as_text(ds.get("PhotometricInterpretation")).upper() or "MONOCHROME2",
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
        acquisition_time=time_only(ds.get("AcquisitionTime")),
        diffusion_bvalue=bvalue,
        diffusion_gradient=gradient,
        is_localizer=is_localizer(kinds),
        transfer_syntax_uid=tsuid,
        header=LazyHeader(ds) if isinstance(ds, rawheader.RawHeader) else acquisition_header(ds),
        planar_configuration=as_int(ds.get("PlanarConfiguration")) or 0,
        big_endian=tsuid == "1.2.840.10008.1.2.2",
        gradient_in_image_frame=in_image_frame,
    )


_SIEMENS_DIFFUSION = frozenset({"B_value", "DiffusionGradientDirection"})
_GE_GRADIENT = (0x001910BB, 0x001910BC, 0x001910BD)
#: GE gradient (0019,10BB-10BD) -> image frame (row, column, normal) components, as (index, sign) per
#: component, keyed by the phase-encoding direction and the patient axis the slice normal is closest
#: to (0 sagittal, 1 coronal, 2 axial). This is dcm2niix's GE transform (after dicm2nii), read in the
#: image frame; tests check it against dcm2niix for every key.
_GE_FRAME = {
    ("COL", 2): ((0, -1), (1, -1), (2, 1)), ("COL", 0): ((0, 1), (1, 1), (2, -1)),
    ("COL", 1): ((0, -1), (1, 1), (2, 1)), ("ROW", 2): ((1, -1), (0, 1), (2, 1)),
    ("ROW", 0): ((1, 1), (0, -1), (2, -1)), ("ROW", 1): ((1, 1), (0, 1), (2, 1)),
}


def ge_image_frame(raw: tuple[float, ...], bvalue: float | None, iop: tuple[float, ...],
                   phase: str) -> tuple[float | None, tuple[float, ...] | None]:
    """(b-value, image-frame gradient) of a GE diffusion frame.

    A gradient shorter than unit length (0.03-0.97) scales the b-value by its squared length,
    rounded to 5 s/mm2, as GE means it and dcm2niix reads it.
    """
    length = math.sqrt(sum(v * v for v in raw))
    if bvalue is not None and 0.03 < length < 0.97:
        scaled = bvalue * length * length
        bvalue = 5.0 if 0 < scaled < 5 else float(int((scaled + 2.5) / 5) * 5)
    normal = (iop[1] * iop[5] - iop[2] * iop[4], iop[2] * iop[3] - iop[0] * iop[5], iop[0] * iop[4] - iop[1] * iop[3])
    dominant = max(range(3), key=lambda i: abs(normal[i]))
    return bvalue, tuple(sign * raw[index] for index, sign in _GE_FRAME[(phase, dominant)])


def diffusion(ds: Any) -> tuple[float | None, tuple[float, ...] | None, bool]:
    """``(b-value, gradient, gradient_in_image_frame)`` from the standard or a vendor's attributes.

    Standard (0018,9087/9089), Siemens (0019,100C/100E, else the CSA image header), Philips
    classic (2001,1003; 2005,10B0-B2): patient LPS. United Imaging (0065,1009/1037) and GE
    (0043,1039; 0019,10BB-10BD, see :func:`ge_image_frame`): image frame.
    """
    bvalue = as_float(ds.get("DiffusionBValue"))
    gradient = as_floats(ds.get("DiffusionGradientOrientation"), 3)
    vendor = as_text(ds.get("Manufacturer")).upper()
    if "SIEMENS" in vendor:
        if bvalue is None and 0x0019100C in ds:
            bvalue = as_float(private_number(ds[0x0019100C]))
        if gradient is None and 0x0019100E in ds:
            gradient = as_floats(private_numbers(ds[0x0019100E]), 3)
        if (bvalue is None or gradient is None) and 0x00291010 in ds:
            try:
                csa = mosaic.parse_csa(ds[0x00291010].value, _SIEMENS_DIFFUSION)
            except (ValueError, struct.error):
                csa = {}
            bvalue = bvalue if bvalue is not None else as_float(csa.get("B_value"))
            gradient = gradient or as_floats(csa.get("DiffusionGradientDirection"), 3)
    elif "PHILIPS" in vendor:
        if bvalue is None and 0x20011003 in ds:
            bvalue = private_float(ds[0x20011003])
        if gradient is None and all(t in ds for t in (0x200510B0, 0x200510B1, 0x200510B2)):
            gradient = as_floats([private_float(ds[t]) for t in (0x200510B0, 0x200510B1, 0x200510B2)], 3)
    elif vendor.startswith("GE"):
        if bvalue is None and 0x00431039 in ds:
            number = as_float(private_number(ds[0x00431039]))
            bvalue = None if number is None else float(int(number) % 1_000_000_000)  # GE's 1e9 bias
        if gradient is None and all(t in ds for t in _GE_GRADIENT):
            raw = as_floats([private_number(ds[t]) for t in _GE_GRADIENT], 3)
            iop = as_floats(ds.get("ImageOrientationPatient"), 6)
            axis = as_text(ds.get("InPlanePhaseEncodingDirection")).upper()
            if raw is not None and iop is not None and axis in ("ROW", "COL"):
                bvalue, gradient = ge_image_frame(raw, bvalue, iop, axis)
                return bvalue, gradient, gradient is not None
    elif vendor.startswith("UIH") or "UNITED IMAGING" in vendor:
        if bvalue is None and 0x00651009 in ds:
            bvalue = private_float(ds[0x00651009])
        if gradient is None and 0x00651037 in ds:
            return bvalue, as_floats(private_numbers(ds[0x00651037]), 3), True
    return bvalue, gradient, False


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
    return frames, as_text(ds.get("PatientID"))


def _frames_and_header(path: Path, ds):
    if ds is None:
        ds, tsuid, pixel, size = _read_header(path)
    else:
        meta = getattr(ds, "file_meta", None)
        tsuid = as_text(meta.get("TransferSyntaxUID")) if meta is not None else ""
        pixel = next(((t, -1, -1) for t in _PIXEL_TAGS if t in ds), None)
        size = -1
        if pixel is None and path.is_file():
            _, tsuid2, pixel, size = _read_header(path)
            tsuid = tsuid or tsuid2
    _check_image(ds, path, pixel, size)
    check_identity(ds, path)
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
    sop = as_text(ds.get("SOPClassUID"))
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


_IDENTITY_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_IDENTITY_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient")


def check_identity(ds: Any, path: Path) -> None:
    """Raise ``corrupt_identity`` when a UID breaks the UI rules or IPP/IOP is not finite numbers.

    Such a file is damaged (overwritten bytes, a broken exporter); read as it is, it would become
    a series of its own beside the series it came from.
    """
    for keyword in _IDENTITY_UIDS:
        problem = uid_problem(as_text(ds.get(keyword)))
        if problem is not None:
            raise UnsupportedDicomError(
                path, f"{keyword} {problem}, so it is not a valid DICOM UID: the file is damaged; "
                "re-export or re-copy it", "corrupt_identity")
    for keyword in _IDENTITY_GEOMETRY:
        if non_finite(ds.get(keyword)):
            raise UnsupportedDicomError(
                path, f"{keyword} holds values that are not finite numbers: the file is damaged; "
                "re-export or re-copy it", "corrupt_identity")


def _sop_name(uid: str) -> str:
    try:
        return UID(uid).name
    except Exception:  # pragma: no cover - unknown UID
        return "unknown"
