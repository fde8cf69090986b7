"""DICOM ingestion: scan a tree, group series, sort and check geometry, decode, de-identify, convert.

Public entry points: :func:`convert_tree` (a tree to NIfTI + sidecars + quarantine table),
:func:`load_series` (one series into memory), :func:`scan_tree` (header index),
:func:`group_frames`, :func:`plan_stack`, the frame reader of :mod:`medcore.dicom.reader`,
de-identification (:class:`Deidentifier`) and DICOM SEG
(:func:`write_seg`, :func:`read_seg`, :func:`seg_on_image_grid`).
Submodules are imported lazily so ``import medcore.dicom`` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "convert_tree": "medcore.dicom.convert",
    "load_series": "medcore.dicom.convert",
    "ConversionReport": "medcore.dicom.convert",
    "SeriesRecord": "medcore.dicom.convert",
    "scan_tree": "medcore.dicom.scan",
    "ScanResult": "medcore.dicom.scan",
    "group_frames": "medcore.dicom.group",
    "StackGroup": "medcore.dicom.group",
    "plan_stack": "medcore.dicom.validate",
    "StackPlan": "medcore.dicom.validate",
    "GeometryError": "medcore.dicom.validate",
    "resample_stack": "medcore.dicom.resample",
    "write_nifti": "medcore.dicom.nifti",
    "Quarantine": "medcore.dicom.quarantine",
    "Frame": "medcore.dicom.frame",
    "read_frames": "medcore.dicom.reader",
    "load_pixels": "medcore.dicom.decode",
    "to_real_values": "medcore.dicom.decode",
    "NotDicomError": "medcore.dicom.frame",
    "UnsupportedDicomError": "medcore.dicom.frame",
    "DecodeError": "medcore.dicom.frame",
    "Deidentifier": "medcore.dicom.deid",
    "DeidentificationError": "medcore.dicom.deid",
    "load_or_create_key": "medcore.dicom.deid",
    "write_seg": "medcore.dicom.seg",
    "read_seg": "medcore.dicom.seg",
    "read_seg_frames": "medcore.dicom.seg",
    "seg_on_image_grid": "medcore.dicom.seg_align",
    "SegAlignmentError": "medcore.dicom.seg_align",
    "SegResult": "medcore.dicom.seg",
    "SegmentationError": "medcore.dicom.seg",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medcore.dicom' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
