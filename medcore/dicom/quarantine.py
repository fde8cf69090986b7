"""The quarantine table: one row per input file that did not end up in a converted volume.

Every input file ends in exactly one place: a written series or a row here with a
machine-readable ``code`` and a human-readable ``message`` (reason and what to do next).

Finding a quarantined file without leaking PHI: input paths often carry patient names or
IDs, so no raw path is written to any output. Each row carries a ``file_id``: a keyed hash
(HMAC through :class:`medcore.dicom.deid.Deidentifier`) of the file's path relative to the input
folder. Whoever holds the input tree and the key recomputes the id of any file
(:func:`file_id`), and ``medcore convert --show-paths`` prints ``file_id -> local path`` to the
terminal only (never to a file or the log). The in-memory :attr:`Quarantine.local_paths`
offers the same mapping to API callers.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

COLUMNS = ["file_id", "code", "message", "series"]

#: Reason codes and what they mean (the message adds the specifics and the next step).
REASONS = {
    "empty_file": "the file is empty",
    "not_dicom": "the file is not DICOM",
    "unreadable": "the file could not be read",
    "truncated": "the file ends before its data does",
    "unsupported_sop_class": "DICOM object that is not an image (SR, RTSTRUCT, ...)",
    "segmentation_object": "DICOM SEG instance: not converted to a volume; used as labels (not an error)",
    "no_pixel_data": "DICOM header without PixelData",
    "unsupported_image": "an image layout that is not supported (float pixels, odd bit depth, ...)",
    "decode_failed": "the pixel data could not be decoded",
    "no_decoder": "no decoder installed for the transfer syntax",
    "duplicate_file": "exact duplicate of another input (same SOPInstanceUID); the copy is not used",
    "missing_geometry": "no ImagePositionPatient/ImageOrientationPatient/PixelSpacing",
    "missing_slices": "slices are missing from the stack",
    "mixed_orientation": "slices with different orientations in one stack",
    "mixed_pixel_spacing": "slices with different pixel spacing in one stack",
    "inconsistent_repeats": "positions repeat unevenly (incomplete 4D series)",
    "moving_positions": "positions differ between the volumes of a 4D series",
    "conflicting_duplicates": "two files share a SOPInstanceUID but differ in pixel data",
    "mixed_patients": "one series holds images of several patients",
    "write_failed": "the output could not be written",
    "internal_error": "an unexpected error while converting the series",
}


def file_id(deid, relative_path: str) -> str:
    """Keyed, stable id of an input file from its path relative to the input folder."""
    keyed = deid.uid("medcore-file:" + str(relative_path).replace("\\", "/"))
    return "file-" + hashlib.sha256(keyed.encode()).hexdigest()[:16]


@dataclass
class Quarantine:
    """Collects quarantine rows; raw paths stay in memory (``local_paths``), never in rows."""

    deid: object
    root: Path
    rows: list[dict] = field(default_factory=list)
    local_paths: dict[str, Path] = field(default_factory=dict)

    def id_of(self, path: Path) -> str:
        try:
            rel = Path(path).relative_to(self.root).as_posix()
        except ValueError:
            rel = Path(path).as_posix()
        fid = file_id(self.deid, rel)
        self.local_paths[fid] = Path(path)
        return fid

    def add(self, path: Path, code: str, message: str, series: str = "") -> None:
        self.rows.append({"file_id": self.id_of(path), "code": code, "message": self.scrub(message, path),
                          "series": series})

    def scrub(self, message: str, path: Path) -> str:
        """Remove the input path, the input root and the file name from a message (they may hold PHI)."""
        path = Path(path)
        for text, placeholder in ((str(path), "<file>"), (str(self.root), "<input>"), (path.name, "<file>")):
            if text and text not in (".", "/"):
                message = message.replace(text, placeholder)
        return message

    def __len__(self) -> int:
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(r["code"] for r in self.rows).items()))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)
