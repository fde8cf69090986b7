"""Place a DICOM SEG on the voxel grid of its converted image series, matched in world space.

:func:`seg_on_image_grid` reads a SEG's frames (:func:`medcore.dicom.seg.read_seg_frames`) and
writes each frame into a label map shaped like the image, ``(column, row, slice)`` in medcore's
NIfTI layout, by mapping the frame's pixel corners from DICOM world space (LPS) through the image's
RAS affine to voxel indices. The SEG may be sparse (frames only where a segment is present), list
its frames in any order, and use another slice order, in-plane flip or axis order than the image:
only the world positions count.

Refusals (:class:`SegAlignmentError`, ``reason`` is a short machine-safe sentence):

* the SEG references another series than ``series_uid`` (or none while one is expected);
* a frame does not lie on the image grid: its corners miss voxel centres by more than
  ``tolerance_mm``, or its pixel spacing/orientation does not step one voxel along one image axis;
* a segment pixel falls outside the image;
* two segments with different label values claim the same voxel (``overlap="refuse"``, the
  default). With ``overlap="last"`` segments are painted in increasing SegmentNumber order, so the
  highest SegmentNumber wins.

Label values: a segment whose SegmentLabel matches one of ``label_names`` (case, spaces, ``-`` and
``_`` ignored; value 0 never matched) gets that value; any other segment gets its SegmentNumber.
SegmentLabel is free text and may hold anything: it is only ever compared, never returned, and no
message of this module quotes it. Results carry pixels, geometry and segment numbers only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcore.dicom.geometry import LPS_TO_RAS, as_iop
from medcore.dicom.seg import SegFrames, SegmentationError, read_seg_frames

__all__ = ["DEFAULT_TOLERANCE_MM", "AlignedSeg", "SegAlignmentError", "image_grid", "segment_values",
           "seg_on_image_grid"]

#: How far (mm) a SEG pixel centre may lie from the image voxel centre it is assigned to.
DEFAULT_TOLERANCE_MM = 0.01


class SegAlignmentError(SegmentationError):
    """The SEG cannot be placed on the image grid; ``reason`` says why (no path, no free text)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass
class AlignedSeg:
    """A SEG on an image grid: ``labels`` ``(column, row, slice)`` with ``affine`` = the image's (RAS)."""

    labels: np.ndarray
    affine: np.ndarray
    values: dict[int, int]  # SegmentNumber -> label value written
    matched_by: dict[int, str]  # SegmentNumber -> "name" or "number"
    referenced_series_uids: list[str] = field(default_factory=list)  # as in the SEG (original UIDs)
    overlap_voxels: int = 0  # voxels claimed by two label values (only non-zero with overlap="last")


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name)).casefold()


def segment_values(segments: Mapping[int, str],
                   label_names: Mapping[int, str] | None) -> tuple[dict[int, int], dict[int, str]]:
    """``(SegmentNumber -> label value, SegmentNumber -> "name"|"number")``; see the module docstring.

    Raises :class:`ValueError` (segment numbers only) when two segments would get one value by
    different routes, which would silently merge unrelated structures.
    """
    by_name = {_norm(v): int(k) for k, v in (label_names or {}).items() if int(k) != 0 and _norm(v)}
    values, how = {}, {}
    for number, label in sorted(segments.items()):
        value = by_name.get(_norm(label)) if label else None
        values[number], how[number] = (value, "name") if value is not None else (int(number), "number")
    for number, value in values.items():
        others = [n for n, v in values.items() if v == value and n != number and how[n] != how[number]]
        if others:
            raise ValueError(f"segment {number} and segment {others[0]} would both become label {value} (one by "
                             "its label name, one by its number); rename or renumber the segments")
    return values, how


def image_grid(image: Any) -> tuple[tuple[int, int, int], np.ndarray]:
    """``(shape, RAS affine)`` of a NIfTI path, a medcore ``Image`` or a ``(shape, affine)`` pair."""
    if isinstance(image, (str, os.PathLike)):
        import nibabel as nib

        try:
            img: Any = nib.load(str(image))
        except Exception as exc:
            raise ValueError(f"{image}: cannot read the image as NIfTI ({exc})") from exc
        shape, affine = img.shape[:3], img.affine
    elif hasattr(image, "spatial_shape") and hasattr(image, "affine"):
        shape, affine = image.spatial_shape, image.affine
    elif isinstance(image, tuple) and len(image) == 2:
        shape, affine = image
    else:
        raise TypeError(f"image must be a NIfTI path, a medcore Image or (shape, affine), got {type(image).__name__}")
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or affine.shape != (4, 4):
        raise ValueError(f"the image must be a 3D volume with a 4x4 affine, got shape {shape}")
    return shape, affine  # type: ignore[return-value]


def _frame_to_voxels(seg: SegFrames, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates of each frame's first pixel and of one step along its columns and rows."""
    rc = as_iop(seg.iop)
    row_spacing, col_spacing = seg.pixel_spacing
    to_voxel = np.linalg.inv(affine) @ LPS_TO_RAS
    origins = (to_voxel[:3, :3] @ seg.positions.T).T + to_voxel[:3, 3]
    d_col = to_voxel[:3, :3] @ (rc[0] * col_spacing)  # one pixel to the right (next column)
    d_row = to_voxel[:3, :3] @ (rc[1] * row_spacing)  # one pixel down (next row)
    return origins, d_col, d_row


def _unit_step(step: np.ndarray) -> np.ndarray | None:
    rounded = np.rint(step)
    return rounded.astype(np.int64) if np.abs(rounded).sum() == 1 else None


def seg_on_image_grid(
    seg: str | os.PathLike,
    image: Any,
    *,
    label_names: Mapping[int, str] | None = None,
    series_uid: str | None = None,
    uid_map: Callable[[str], str] | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    overlap: str = "refuse",
) -> AlignedSeg:
    """The SEG at ``seg`` as a label map on ``image``'s grid (see the module docstring).

    ``series_uid`` is the image's SeriesInstanceUID in the namespace of ``uid_map`` (pass the
    de-identifier's ``uid`` to compare de-identified UIDs); when given, the SEG must reference it.
    """
    if overlap not in ("refuse", "last"):
        raise ValueError(f"overlap must be 'refuse' or 'last', got {overlap!r}")
    path = Path(seg)
    frames = read_seg_frames(path)
    refs = frames.referenced_series_uids
    if series_uid is not None:
        mapped = [uid_map(u) if uid_map else u for u in refs]
        if not refs:
            raise SegAlignmentError(path, "the SEG names no referenced series, so it cannot be matched to this image")
        if series_uid not in mapped:
            raise SegAlignmentError(path, "the SEG references another series than this image")
    shape, affine = image_grid(image)
    try:
        values, how = segment_values(frames.segments, label_names)
    except ValueError as exc:
        raise SegAlignmentError(path, str(exc)) from exc

    origins, d_col, d_row = _frame_to_voxels(frames, affine)
    step_col, step_row = _unit_step(d_col), _unit_step(d_row)
    if step_col is None or step_row is None or abs(int(np.dot(np.abs(step_col), np.abs(step_row)))) == 1:
        raise SegAlignmentError(path, "the SEG's pixel spacing or orientation does not step one voxel along an "
                                      "image axis (it was drawn on another grid; resample it first)")
    n_frames, rows, columns = frames.frames.shape
    vox_mm = np.linalg.norm(affine[:3, :3], axis=0)
    corners = [(0, 0), (columns - 1, 0), (0, rows - 1), (columns - 1, rows - 1)]
    worst = 0.0
    starts = np.rint(origins).astype(np.int64)
    for c, r in corners:
        exact = origins + c * d_col + r * d_row
        nearest = starts + c * step_col + r * step_row
        worst = max(worst, float(np.max(np.linalg.norm((exact - nearest) * vox_mm, axis=1))))
    if worst > tolerance_mm:
        raise SegAlignmentError(path, f"SEG frames lie up to {worst:.3g} mm off the image's voxel centres "
                                      f"(tolerance {tolerance_mm:g} mm)")

    dtype = np.uint8 if max(values.values(), default=0) < 256 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    claimed = np.zeros(shape, dtype=bool)
    overlap_voxels = 0
    rr, cc = np.nonzero(np.ones((rows, columns), dtype=bool))
    for f in np.argsort(frames.numbers, kind="stable"):
        number = int(frames.numbers[f])
        if number not in values:
            raise SegAlignmentError(path, f"frame {f + 1} refers to segment {number}, which the SEG does not define")
        on = frames.frames[f].reshape(-1)
        if not on.any():
            continue
        idx = starts[f][:, None] + cc[on][None, :] * step_col[:, None] + rr[on][None, :] * step_row[:, None]
        inside = np.all((idx >= 0) & (idx < np.asarray(shape)[:, None]), axis=0)
        if not inside.all():
            raise SegAlignmentError(path, f"segment {number} has {int((~inside).sum())} pixels outside the image "
                                          "(the SEG covers more than this series)")
        target = tuple(idx)
        value = values[number]
        clash = claimed[target] & (labels[target] != value)
        if clash.any():
            if overlap == "refuse":
                raise SegAlignmentError(path, f"segment {number} overlaps another segment in {int(clash.sum())} "
                                              "voxels (overlapping segments are refused)")
            overlap_voxels += int(clash.sum())
        labels[target] = value
        claimed[target] = True
    return AlignedSeg(labels, affine, values, how, list(refs), overlap_voxels)
