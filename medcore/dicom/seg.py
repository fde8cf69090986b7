"""DICOM Segmentation (SEG) objects: write a label volume as a BINARY SEG, read any SEG back.

:func:`build_seg` turns a label map laid out like medcore's converted volumes, ``(column, row,
slice sorted along the slice normal)``, into one highdicom ``Segmentation`` that references its
source series: one segment per named label value, one frame per (segment, slice). With a
:class:`SegAlgorithm` (the model's name and registry version) the segments are AUTOMATIC and the
UIDs are derived from (source series, model, version) by :func:`seg_uids`, so storing the result
twice keeps one copy. :func:`write_seg` writes it atomically.

:func:`read_seg` reads a SEG (BINARY or FRACTIONAL; frames may be sparse, as many tools write
them) into a label map ``(column, row, slice)`` and its RAS affine, placing each frame by its
ImagePositionPatient. Geometry is computed with :mod:`medcore.dicom.geometry`, so a SEG and the
series it was drawn on line up in world space. :func:`read_seg_frames` returns the frames as
stored (for :mod:`medcore.dicom.seg_align`, which places them on a converted image's grid, refusing
rather than resampling; highdicom's volume reader would resample or reject sparse inputs instead);
:func:`referenced_series_uids` reads only the series a SEG references.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from medcore.dicom.geometry import affine_ras, slice_normal
from medcore.utils.atomic import atomic_path

__all__ = ["SEGMENTATION_STORAGE", "SegAlgorithm", "SegFrames", "SegResult", "SegUids", "SegmentationError",
           "build_seg", "read_seg", "read_seg_frames", "referenced_series_uids", "seg_uids", "sorted_sources",
           "source_affine", "write_seg"]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# SNOMED CT codes for the properties medcore's synthetic phantoms label; others get a generic code.
_PROPERTY_CODES: dict[str, tuple[str, str, str]] = {
    "liver": ("10200004", "SCT", "Liver"),
    "spleen": ("78961009", "SCT", "Spleen"),
    "kidney": ("64033007", "SCT", "Kidney"),
    "kidney_left": ("18639004", "SCT", "Left kidney"),
    "kidney_right": ("9846003", "SCT", "Right kidney"),
}
_GENERIC_PROPERTY = ("85756007", "SCT", "Tissue")
_CATEGORY = ("91723000", "SCT", "Anatomical Structure")
#: Namespace of the deterministic SEG UIDs (a UUID, so the UIDs are valid ``2.25.<uuid>`` UIDs).
_UID_NAMESPACE = uuid.UUID("6f0d6a4e-3c1b-5b8e-9a51-6d65646f7265")


class SegmentationError(ValueError):
    """A SEG that cannot be written or read (the message names the file and the reason)."""


@dataclass(frozen=True)
class SegAlgorithm:
    """The model that produced a SEG: its name and registry version (AlgorithmIdentificationSequence)."""

    name: str
    version: str


@dataclass(frozen=True)
class SegUids:
    """SeriesInstanceUID and SOPInstanceUID of a SEG."""

    series: str
    instance: str


def seg_uids(source_series_uid: str, algorithm: SegAlgorithm) -> SegUids:
    """UIDs derived from (source series, model name, model version): re-running the same model on the
    same series gives the same SOPInstanceUID, so a PACS keeps one copy."""
    base = "\x1f".join((str(source_series_uid), algorithm.name, str(algorithm.version)))
    return SegUids(f"2.25.{uuid.uuid5(_UID_NAMESPACE, base + '|series').int}",
                   f"2.25.{uuid.uuid5(_UID_NAMESPACE, base + '|instance').int}")


@dataclass
class SegResult:
    """A SEG read back: label map ``(column, row, slice)``, RAS affine and segment names."""

    labels: np.ndarray
    affine: np.ndarray
    segments: dict[int, str]
    series_uid: str
    referenced_series_uid: str | None


def _read_header(path: str | os.PathLike) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:
        raise SegmentationError(f"{path}: cannot read source DICOM header ({exc})") from exc


def sorted_sources(source: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Dataset]) -> list[Dataset]:
    """The source series' headers sorted along the slice normal: the slice order of medcore's volumes.

    ``source`` is a series folder (its ``*.dcm`` files), a list of files, or a list of datasets.
    """
    if isinstance(source, (str, os.PathLike)):
        items: list = sorted(Path(source).glob("*.dcm"))
    else:
        items = list(source)
    headers = [item if isinstance(item, Dataset) else _read_header(item) for item in items]
    if not headers:
        raise SegmentationError("no source images given: pass the files of the series the labels belong to")
    for ds in headers:
        for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SOPInstanceUID"):
            if kw not in ds:
                raise SegmentationError(f"source image {ds.get('InstanceNumber', '?')} lacks {kw}; "
                                        "a SEG needs a positioned stack")
    normal = slice_normal([float(v) for v in headers[0].ImageOrientationPatient])
    headers.sort(key=lambda h: float(np.dot([float(v) for v in h.ImagePositionPatient], normal)))
    return headers


def source_affine(sources: Sequence[Dataset]) -> np.ndarray:
    """RAS affine of the grid ``sorted_sources`` spans (slice step from the first two positions)."""
    first = sources[0]
    iop = [float(v) for v in first.ImageOrientationPatient]
    positions = np.array([[float(v) for v in s.ImagePositionPatient] for s in sources])
    step = (float(np.median(np.diff(positions @ slice_normal(iop)))) if len(sources) > 1
            else float(first.get("SliceThickness", 1) or 1))
    return affine_ras(iop, positions[0], [float(v) for v in first.PixelSpacing], step)


def _code(value: tuple[str, str, str]) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(*value)


def _segments(label_names: Mapping[int, str], present: Sequence[int],
              algorithm: SegAlgorithm | None) -> tuple[list[hd.seg.SegmentDescription], dict[int, int]]:
    """One segment per named non-zero label value (numbered 1.. in value order) and value -> number."""
    values = sorted({int(v) for v in label_names if int(v) != 0} | set(present))
    missing = [v for v in present if v not in label_names]
    if missing:
        raise SegmentationError(f"labels {missing} have no name in label_names; name every non-zero label")
    ident = None
    if algorithm is not None:
        ident = hd.AlgorithmIdentificationSequence(name=algorithm.name[:64], version=str(algorithm.version)[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = str(label_names[value])
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=_code(_CATEGORY),
            segmented_property_type=_code(_PROPERTY_CODES.get(name, _GENERIC_PROPERTY)),
            algorithm_type="AUTOMATIC" if algorithm else "MANUAL", algorithm_identification=ident))
    return descriptions, {v: n for n, v in enumerate(values, start=1)}


def build_seg(
    labels: np.ndarray,
    source: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Dataset],
    label_names: Mapping[int, str],
    *,
    algorithm: SegAlgorithm | None = None,
    affine: np.ndarray | None = None,
    series_description: str = "medcore segmentation",
) -> Dataset:
    """A BINARY SEG (highdicom) of ``labels`` ``(column, row, slice)``, slices sorted along the normal.

    ``source`` is the series folder, its files or their datasets; the label grid must be the
    series' own grid (``affine``, when given, is checked against it, so a resampled volume is
    refused). One segment per named non-zero label value. With an ``algorithm`` the segments are
    AUTOMATIC, identify the model and its version, and the UIDs come from :func:`seg_uids`;
    without one they are MANUAL with fresh UIDs. The SEG references the source series, shares its
    Frame of Reference and carries its patient and study attributes: it is as identifying as the source.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise SegmentationError(f"labels must be 3D (column, row, slice), got shape {labels.shape}")
    sources = sorted_sources(source)
    first = sources[0]
    rows, columns = int(first.Rows), int(first.Columns)
    if labels.shape != (columns, rows, len(sources)):
        raise SegmentationError(f"labels shape {labels.shape} does not match the source series "
                                f"({columns} columns, {rows} rows, {len(sources)} slices)")
    if affine is not None and not np.allclose(np.asarray(affine, dtype=np.float64), source_affine(sources),
                                              atol=1e-3):
        raise SegmentationError("the labels' affine is not the source series' grid (was the series resampled?); "
                                "a SEG must be drawn on the images it references")
    present = [int(v) for v in np.unique(labels) if v != 0]
    descriptions, numbers = _segments(label_names, present, algorithm)
    lookup = np.zeros(max([0, *numbers]) + 1, dtype=np.uint16)
    for value, number in numbers.items():
        lookup[value] = number
    pixels = lookup[labels.transpose(2, 1, 0)]  # (slice, row, column) as the source frames
    pixels = pixels.astype(np.uint8 if len(numbers) < 256 else np.uint16)
    uids = (seg_uids(str(first.SeriesInstanceUID), algorithm) if algorithm is not None
            else SegUids(generate_uid(), generate_uid()))
    try:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=uids.series,
            series_number=int(first.get("SeriesNumber", 0) or 0) + 1000, sop_instance_uid=uids.instance,
            instance_number=1, manufacturer="medcore", manufacturer_model_name=algorithm.name[:64] if algorithm
            else "medcore.dicom.seg", software_versions=str(algorithm.version)[:64] if algorithm else "1",
            device_serial_number="0", series_description=series_description[:64],
            content_description=series_description[:64], content_label="SEGMENTATION",
            omit_empty_frames=False)  # one frame per (segment, slice): an empty segment stays explicit
    except (ValueError, TypeError, AttributeError) as exc:
        raise SegmentationError(f"cannot build a SEG on this source series: {exc}") from exc
    if "ResponsiblePerson" in seg and "ResponsiblePersonRole" not in seg:
        del seg.ResponsiblePerson  # a Type 1C pair: copied without its role it would make the SEG invalid
    return seg


def write_seg(
    labels: np.ndarray,
    source: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[Dataset],
    path: str | os.PathLike,
    label_names: Mapping[int, str],
    *,
    series_description: str = "medcore segmentation",
    algorithm: SegAlgorithm | None = None,
    affine: np.ndarray | None = None,
) -> Path:
    """:func:`build_seg`, written atomically to ``path``."""
    ds = build_seg(labels, source, label_names, algorithm=algorithm, affine=affine,
                   series_description=series_description)
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
