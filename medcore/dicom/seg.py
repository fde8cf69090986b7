"""DICOM Segmentation (SEG) objects: write a label volume as a BINARY SEG, read any SEG back.

:func:`write_seg` turns a label map laid out like medcore's converted volumes, ``(column, row,
slice sorted along the slice normal)``, into one SEG instance that references its source series:
one segment per non-zero label, one frame per (segment, slice), packed one bit per pixel.

:func:`read_seg` reads a SEG (BINARY or FRACTIONAL; frames may be sparse, as many tools write
them) into a label map ``(column, row, slice)`` and its RAS affine, placing each frame by its
ImagePositionPatient. Geometry is computed with :mod:`medcore.dicom.geometry`, so a SEG and the
series it was drawn on line up in world space. :func:`read_seg_frames` returns the frames as
stored (for :mod:`medcore.dicom.seg_align`, which places them on a converted image's grid);
:func:`referenced_series_uids` reads only the series a SEG references.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from medcore.dicom.geometry import affine_ras, slice_normal
from medcore.utils.atomic import atomic_path

__all__ = ["SegmentationError", "SegFrames", "SegResult", "read_seg", "read_seg_frames", "referenced_series_uids",
           "write_seg", "SEGMENTATION_STORAGE"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
# SNOMED CT codes for the properties medcore's synthetic phantoms label; others get a generic code.
_PROPERTY_CODES: dict[str, tuple[str, str, str]] = {
    "liver": ("10200004", "SCT", "Liver"),
    "spleen": ("78961009", "SCT", "Spleen"),
    "kidney": ("64033007", "SCT", "Kidney"),
    "kidney_left": ("18639004", "SCT", "Left kidney"),
    "kidney_right": ("9846003", "SCT", "Right kidney"),
}
_GENERIC_PROPERTY = ("85756007", "SCT", "Tissue")
_SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")
_FIELDS_FROM_SOURCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientIdentityRemoved",
    "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName",
    "StudyID", "AccessionNumber", "FrameOfReferenceUID", "PositionReferenceIndicator",
)


class SegmentationError(ValueError):
    """A SEG that cannot be written or read (the message names the file and the reason)."""


@dataclass
class SegResult:
    """A SEG read back: label map ``(column, row, slice)``, RAS affine and segment names."""

    labels: np.ndarray
    affine: np.ndarray
    segments: dict[int, str]
    series_uid: str
    referenced_series_uid: str | None


def _code(value: tuple[str, str, str]) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value
    return item


def _sorted_sources(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Dataset]]:
    headers = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:
            raise SegmentationError(f"{path}: cannot read source DICOM header ({exc})") from exc
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SOPInstanceUID"):
            if kw not in ds:
                raise SegmentationError(f"{path}: source image lacks {kw}; a SEG needs a positioned stack")
        headers.append((Path(path), ds))
    if not headers:
        raise SegmentationError("no source images given: pass the files of the series the labels belong to")
    normal = slice_normal([float(v) for v in headers[0][1].ImageOrientationPatient])
    headers.sort(key=lambda h: float(np.dot([float(v) for v in h[1].ImagePositionPatient], normal)))
    return headers


def write_seg(
    labels: np.ndarray,
    source: str | os.PathLike | Sequence[str | os.PathLike],
    path: str | os.PathLike,
    label_names: Mapping[int, str],
    *,
    series_description: str = "medcore segmentation",
    algorithm: str | None = None,
) -> Path:
    """Write ``labels`` ``(column, row, slice)`` (slices sorted along the normal) as a BINARY SEG.

    ``source`` is the series folder or its files; the label grid must match it. ``algorithm`` names
    the producing algorithm (AUTOMATIC segments) or, when None, the segments are MANUAL. The SEG
    copies patient and study attributes from the source, so it is as identifying as the source.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise SegmentationError(f"labels must be 3D (column, row, slice), got shape {labels.shape}")
    files = sorted(Path(source).glob("*.dcm")) if isinstance(source, (str, os.PathLike)) else list(source)
    sources = _sorted_sources(files)
    first = sources[0][1]
    rows, columns = int(first.Rows), int(first.Columns)
    if labels.shape != (columns, rows, len(sources)):
        raise SegmentationError(f"labels shape {labels.shape} does not match the source series "
                                f"({columns} columns, {rows} rows, {len(sources)} slices)")
    present = [int(v) for v in np.unique(labels) if v != 0]
    missing = [v for v in present if v not in label_names]
    if missing:
        raise SegmentationError(f"labels {missing} have no name in label_names; name every non-zero label")

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SEGMENTATION_STORAGE
    ds.SOPInstanceUID = generate_uid()
    for kw in _FIELDS_FROM_SOURCE:
        if kw in first:
            ds[kw] = first[kw]
    now = _dt.datetime.now()
    ds.ContentDate, ds.ContentTime = first.get("StudyDate", now.strftime("%Y%m%d")), now.strftime("%H%M%S")
    ds.SeriesDate = ds.ContentDate
    ds.Modality = "SEG"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + 1000
    ds.SeriesDescription = series_description
    ds.InstanceNumber = 1
    ds.Manufacturer = "medcore"
    ds.ManufacturerModelName = "medcore.dicom.seg"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = "1"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.ContentLabel = "SEGMENTATION"
    ds.ContentDescription = series_description[:64]
    ds.ContentCreatorName = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 1, 0, 0
    ds.LossyImageCompression = "00"
    ds.SegmentationType = "BINARY"

    segments = []
    for number, value in enumerate(present, start=1):
        seg = Dataset()
        seg.SegmentNumber = number
        name = str(label_names[value])
        seg.SegmentLabel = name[:64]
        seg.SegmentAlgorithmType = "AUTOMATIC" if algorithm else "MANUAL"
        if algorithm:
            seg.SegmentAlgorithmName = algorithm[:64]
        seg.SegmentedPropertyCategoryCodeSequence = DicomSequence([_code(_CATEGORY)])
        seg.SegmentedPropertyTypeCodeSequence = DicomSequence([_code(_PROPERTY_CODES.get(name, _GENERIC_PROPERTY))])
        segments.append(seg)
    ds.SegmentSequence = DicomSequence(segments)

    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = first.ImageOrientationPatient
    measures = Dataset()
    measures.PixelSpacing = first.PixelSpacing
    positions = np.array([[float(v) for v in s.ImagePositionPatient] for _, s in sources])
    normal = slice_normal([float(v) for v in first.ImageOrientationPatient])
    step = (
        float(np.median(np.diff(positions @ normal)))
        if len(sources) > 1
        else float(first.get("SliceThickness", 1) or 1)
    )
    measures.SliceThickness = first.get("SliceThickness", f"{step:.6g}")
    measures.SpacingBetweenSlices = f"{step:.6g}"
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    dim_uid = generate_uid()
    org = Dataset()
    org.DimensionOrganizationUID = dim_uid
    ds.DimensionOrganizationSequence = DicomSequence([org])
    dim_seg, dim_pos = Dataset(), Dataset()
    dim_seg.DimensionOrganizationUID = dim_pos.DimensionOrganizationUID = dim_uid
    dim_seg.DimensionIndexPointer, dim_seg.FunctionalGroupPointer = 0x0062000B, 0x0062000A
    dim_pos.DimensionIndexPointer, dim_pos.FunctionalGroupPointer = 0x00200032, 0x00209113
    ds.DimensionIndexSequence = DicomSequence([dim_seg, dim_pos])

    frames, bits = [], []
    for number, value in enumerate(present, start=1):
        for k, (_, src) in enumerate(sources):
            item = Dataset()
            derivation = Dataset()
            ref = Dataset()
            ref.ReferencedSOPClassUID = src.SOPClassUID
            ref.ReferencedSOPInstanceUID = src.SOPInstanceUID
            ref.PurposeOfReferenceCodeSequence = DicomSequence([_code(_SOURCE_PURPOSE)])
            derivation.SourceImageSequence = DicomSequence([ref])
            derivation.DerivationCodeSequence = DicomSequence([_code(("113076", "DCM", "Segmentation"))])
            item.DerivationImageSequence = DicomSequence([derivation])
            content = Dataset()
            content.DimensionIndexValues = [number, k + 1]
            item.FrameContentSequence = DicomSequence([content])
            position = Dataset()
            position.ImagePositionPatient = src.ImagePositionPatient
            item.PlanePositionSequence = DicomSequence([position])
            ident = Dataset()
            ident.ReferencedSegmentNumber = number
            item.SegmentIdentificationSequence = DicomSequence([ident])
            frames.append(item)
            bits.append((labels[:, :, k] == value).T.reshape(-1))  # frame pixels in row-major order
    ds.NumberOfFrames = len(frames)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    packed = np.packbits(np.concatenate(bits) if bits else np.zeros(0, bool), bitorder="little").tobytes()
    ds.PixelData = packed + (b"\0" if len(packed) % 2 else b"")
    ds["PixelData"].VR = "OB"

    referenced = Dataset()
    referenced.SeriesInstanceUID = first.SeriesInstanceUID
    instances = []
    for _, src in sources:
        inst = Dataset()
        inst.ReferencedSOPClassUID = src.SOPClassUID
        inst.ReferencedSOPInstanceUID = src.SOPInstanceUID
        instances.append(inst)
    referenced.ReferencedInstanceSequence = DicomSequence(instances)
    ds.ReferencedSeriesSequence = DicomSequence([referenced])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SEGMENTATION_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _frame_value(item: Dataset, sequence: str, keyword: str, shared: Dataset | None):
    for group in (item, shared):
        if group is not None and sequence in group and len(group[sequence].value):
            inner = group[sequence].value[0]
            if keyword in inner:
                return inner[keyword].value
    return None


@dataclass
class SegFrames:
    """The frames of a SEG as stored: one boolean plane per frame with its position and segment.

    ``frames`` is ``(n_frames, rows, columns)``; ``positions`` ``(n_frames, 3)`` LPS mm (IPP of each
    frame); ``numbers`` the ReferencedSegmentNumber of each frame. ``segments`` maps SegmentNumber to
    SegmentLabel (free text: it may hold anything, so never copy it to an output).
    """

    frames: np.ndarray
    positions: np.ndarray
    numbers: np.ndarray
    iop: list[float]
    pixel_spacing: list[float]  # (row spacing, column spacing) as in DICOM
    spacing_between_slices: float | None
    slice_thickness: float | None
    segments: dict[int, str]
    series_uid: str
    referenced_series_uids: list[str]


def _referenced_series(ds: Dataset) -> list[str]:
    out = []
    for item in ds.get("ReferencedSeriesSequence", []):
        uid = str(item.get("SeriesInstanceUID", "") or "").strip()
        if uid and uid not in out:
            out.append(uid)
    return out


def referenced_series_uids(path: str | os.PathLike) -> list[str]:
    """SeriesInstanceUIDs a SEG references (header only; empty when it names none)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise SegmentationError(f"{path}: cannot read DICOM header ({exc})") from exc
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise SegmentationError(f"{path}: not a DICOM SEG (SOP Class {ds.get('SOPClassUID', 'missing')})")
    return _referenced_series(ds)


def read_seg_frames(path: str | os.PathLike) -> SegFrames:
    """Read a SEG's frames, positions and segment numbers without building a grid.

    BINARY frames are unpacked; FRACTIONAL frames are thresholded at half MaximumFractionalValue.
    """
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise SegmentationError(f"{path}: cannot read DICOM ({exc})") from exc
    if str(ds.get("SOPClassUID", "")) != SEGMENTATION_STORAGE:
        raise SegmentationError(f"{path}: not a DICOM SEG (SOP Class {ds.get('SOPClassUID', 'missing')})")
    rows, columns, n_frames = int(ds.Rows), int(ds.Columns), int(ds.get("NumberOfFrames", 1) or 1)
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence", []))
    if len(per_frame) != n_frames:
        raise SegmentationError(f"{path}: {n_frames} frames but {len(per_frame)} per-frame groups")
    iop = _frame_value(per_frame[0], "PlaneOrientationSequence", "ImageOrientationPatient", shared)
    spacing = _frame_value(per_frame[0], "PixelMeasuresSequence", "PixelSpacing", shared)
    if iop is None or spacing is None:
        raise SegmentationError(f"{path}: no ImageOrientationPatient or PixelSpacing in the functional groups")
    iop = [float(v) for v in iop]
    for i, item in enumerate(per_frame[1:], start=2):
        other = _frame_value(item, "PlaneOrientationSequence", "ImageOrientationPatient", shared)
        if other is not None and np.max(np.abs(np.asarray([float(v) for v in other]) - iop)) > 1e-4:
            raise SegmentationError(f"{path}: frame {i} has another ImageOrientationPatient than frame 1; "
                                    "frames of several orientations are not supported")
    positions, numbers = [], []
    for i, item in enumerate(per_frame):
        ipp = _frame_value(item, "PlanePositionSequence", "ImagePositionPatient", None)
        number = _frame_value(item, "SegmentIdentificationSequence", "ReferencedSegmentNumber", None)
        if ipp is None or number is None:
            raise SegmentationError(f"{path}: frame {i + 1} lacks ImagePositionPatient or ReferencedSegmentNumber")
        positions.append([float(v) for v in ipp])
        numbers.append(int(number))
    if ds.SegmentationType == "BINARY":
        raw = np.frombuffer(ds.PixelData, dtype=np.uint8)
        bits = np.unpackbits(raw, bitorder="little")[: n_frames * rows * columns]
        if bits.size != n_frames * rows * columns:
            raise SegmentationError(f"{path}: PixelData holds {bits.size} bits, {n_frames * rows * columns} expected")
        frames = bits.reshape(n_frames, rows, columns).astype(bool)
    else:
        pixels = ds.pixel_array.reshape(n_frames, rows, columns)
        frames = pixels > (int(ds.get("MaximumFractionalValue", 255)) // 2)
    declared = _frame_value(per_frame[0], "PixelMeasuresSequence", "SpacingBetweenSlices", shared)
    thickness = _frame_value(per_frame[0], "PixelMeasuresSequence", "SliceThickness", shared)
    segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", "")) for s in ds.get("SegmentSequence", [])}
    return SegFrames(frames, np.asarray(positions, dtype=np.float64), np.asarray(numbers, dtype=np.int64), iop,
                     [float(v) for v in spacing], float(declared) if declared not in (None, "") else None,
                     float(thickness) if thickness not in (None, "") else None, segments,
                     str(ds.SeriesInstanceUID), _referenced_series(ds))


def read_seg(path: str | os.PathLike) -> SegResult:
    """Read a SEG into a label map ``(column, row, slice)`` (value = segment number) and RAS affine.

    Frames are placed by ImagePositionPatient along the slice normal; the grid spans the frames
    present with the SEG's slice spacing. Where segments overlap the higher segment number wins.
    To place a SEG on the grid of its image series instead, use :mod:`medcore.dicom.seg_align`.
    """
    path = Path(path)
    seg = read_seg_frames(path)
    frames, positions, numbers = seg.frames, seg.positions, seg.numbers
    _, rows, columns = frames.shape
    normal = slice_normal(seg.iop)
    along = positions @ normal
    unique = np.unique(np.round(along, 3))
    if seg.spacing_between_slices is not None and seg.spacing_between_slices > 0:
        step = seg.spacing_between_slices
    elif len(unique) > 1:
        step = float(np.min(np.diff(unique)))
    else:
        step = seg.slice_thickness or 1.0
    index = np.rint((along - along.min()) / step).astype(int)
    if np.any(np.abs((along - along.min()) / step - index) > 0.05):
        raise SegmentationError(f"{path}: frame positions are not on a regular grid of {step} mm")
    n_slices = int(index.max()) + 1
    labels = np.zeros((columns, rows, n_slices), dtype=np.uint8 if numbers.max() < 256 else np.uint16)
    for f in np.argsort(numbers, kind="stable"):
        labels[:, :, index[f]][frames[f].T] = numbers[f]
    origin = positions[int(np.argmin(along))]
    affine = affine_ras(seg.iop, origin, seg.pixel_spacing, step)
    refs = seg.referenced_series_uids
    return SegResult(labels, affine, seg.segments, seg.series_uid, refs[0] if refs else None)
