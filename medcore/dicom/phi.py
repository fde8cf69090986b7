"""A PHI scan of outputs: the identifying header values of a DICOM source, searched for in written files.

An audit, not de-identification (that is :mod:`medcore.dicom.deid`): it tells whether any value
of the source's identifying attributes survived into an output tree, byte for byte. Also the one
rule for free text that may be kept: a SEG's SegmentLabel as a class name (:func:`class_name`).
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable
from pathlib import Path

import pydicom
from pydicom.multival import MultiValue

__all__ = ["PHI_KEYWORDS", "class_name", "find_values", "identifying_words", "source_phi_values"]

# DICOM attributes whose values are identifying; the scan looks for them in the outputs
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
                "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
                "OperatorsName", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "FrameOfReferenceUID", "StudyDescription", "SeriesDescription", "PatientAddress",
                "PatientTelephoneNumbers", "StationName", "DeviceSerialNumber", "MedicalRecordLocator")
MIN_LENGTH = 6  # shorter values (sex, short codes) match by chance
CLASS_NAME = re.compile(r"[A-Za-z][A-Za-z _-]{0,39}")


def source_phi_values(folder: str | os.PathLike) -> set[str]:
    """Identifying values read from the DICOM headers under ``folder`` (one file per sub-folder)."""
    values: set[str] = set()
    first: dict[Path, Path] = {}
    for f in sorted(Path(folder).rglob("*")):
        if f.is_file():
            first.setdefault(f.parent, f)
    for f in first.values():
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except Exception:  # unreadable files are quarantined by conversion, not scanned here
            continue
        for kw in PHI_KEYWORDS:
            v = ds.get(kw)
            for item in (v if isinstance(v, (list, MultiValue)) else [v]):
                text = str(item).strip() if item is not None else ""
                if len(text) >= MIN_LENGTH:
                    values.add(text)
    return values


def find_values(folder: str | os.PathLike, values: set[str]) -> list[str]:
    """``file: xx***`` (the value's first two characters only) for each value found in any file under
    ``folder``; raw bytes are searched, ``.gz`` files after decompression."""
    hits = []
    needles = [(v, v.encode("utf-8", "ignore")) for v in values]
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except OSError:
                pass
        hits += [f"{path.name}: {v[:2]}***" for v, n in needles if n in data]
    return hits


def identifying_words(values: Iterable[str]) -> set[str]:
    """The words (3+ letters, lower case) of identifying values: a patient's name parts, ids, places."""
    return {w for v in values for w in re.split(r"[^a-z]+", v.lower()) if len(w) >= 3}


def class_name(label: str, identifying: set[str]) -> str | None:
    """A SEG SegmentLabel as a class name (lower case, ``_`` for spaces and ``-``), or None when it may
    identify someone: only letters, spaces, ``-`` and ``_`` (no digits, so no ids or dates), at most 40
    characters, and no word in ``identifying`` (:func:`identifying_words` of the study's headers)."""
    text = label.strip()
    if not CLASS_NAME.fullmatch(text):
        return None
    words = re.split(r"[\s_-]+", text.lower())
    if any(w in identifying for w in words):
        return None
    return "_".join(w for w in words if w)
