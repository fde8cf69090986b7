"""One 2D image plane per :class:`Frame`: the unit that DICOM ingestion groups, sorts and decodes.

Error codes (``exc.code``; ``exc.path`` and ``exc.reason`` name the file and the cause):
``empty_file``, ``not_dicom``, ``unreadable`` (:class:`NotDicomError`); ``truncated``,
``no_pixel_data``, ``unsupported_sop_class`` (SR, RTSTRUCT, PR, KO, SEG, DICOMDIR ...),
``unsupported_image`` (float pixels, BitsAllocated 1, no Rows/Columns), ``bad_mosaic``,
``inconsistent_frames`` (:class:`UnsupportedDicomError`); ``decode_failed``, ``no_decoder``,
``truncated`` (:class:`DecodeError`, raised by :func:`medcore.dicom.decode.load_pixels`).

Frames of one file share ``sop_instance_uid``; ``(path, frame_index)`` identifies a frame.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DicomFrameError(Exception):
    """Base of the errors raised for one file; ``code`` is machine-readable, ``path`` names it."""

    code = "dicom_error"

    def __init__(self, path: str | os.PathLike[str], reason: str, code: str | None = None) -> None:
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
    header: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
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
    #: ``diffusion_gradient`` is given in the image frame (row, column, normal), not in patient LPS.
    gradient_in_image_frame: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of this frame's decoded array: ``(rows, cols)`` or ``(rows, cols, samples)``."""
        if self.samples_per_pixel > 1:
            return (self.rows, self.cols, self.samples_per_pixel)
        return (self.rows, self.cols)


def with_changes(frame: Frame, **changes: Any) -> Frame:
    """A copy of ``frame`` with some fields changed (a fast ``dataclasses.replace``)."""
    new = object.__new__(Frame)
    new.__dict__.update(frame.__dict__)
    new.__dict__.update(changes)
    return new
