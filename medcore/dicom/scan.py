"""Scan a folder tree of any size into a frame index, reading DICOM headers only.

:func:`scan_tree` lists every regular file, reads each header once (in a process pool for
big trees) and returns a :class:`ScanResult`: the :class:`~medcore.dicom.frame.Frame` objects, a
pandas index with one row per frame, and the files that are not usable DICOM images with a
reason code. The in-memory result holds local paths and the raw PatientID of each image file (taken
from the same single header read, to derive the subject pseudonym; never saved);
:func:`deidentified_index` is the form that may be saved (``scan_index.parquet``): paths become
keyed file ids, UIDs are remapped, the patient becomes a pseudonym.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd
import pydicom

from medcore.dicom import rawheader
from medcore.dicom.frame import DicomFrameError, Frame
from medcore.dicom.quarantine import file_id
from medcore.dicom.reader import read_frames_and_patient
from medcore.dicom.seg import SEGMENTATION_STORAGE

#: Trees with fewer files than this are scanned in-process (a pool costs more than it saves).
POOL_MIN_FILES = 400
CHUNK = 128

_FRAME_COLUMNS = [f.name for f in fields(Frame) if f.name not in ("header", "path")]


@dataclass
class ScanResult:
    """Frames of every readable image file, their index, and the files skipped with a reason."""

    root: Path
    files: list[Path]
    frames: list[Frame]
    index: pd.DataFrame  # one row per frame (row label = position in ``frames``)
    skipped: pd.DataFrame  # columns: file (index into files), code, message
    _patients: dict[int, str] = field(default_factory=dict, repr=False)

    @property
    def n_files(self) -> int:
        return len(self.files)

    def patient_id_of(self, file_idx: int) -> str:
        """Raw PatientID of one file (from the scan, else read now; in memory only, never saved)."""
        if file_idx not in self._patients:
            self._patients[file_idx] = read_patient_id(self.files[file_idx])
        return self._patients[file_idx]


def list_files(root: str | os.PathLike, exclude: Iterable[Path] = ()) -> list[Path]:
    """Every regular file below ``root`` (sorted, symlinked folders not followed)."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: input folder does not exist or is not a folder")
    excluded = [Path(p).resolve() for p in exclude]
    out: list[Path] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(d for d in dirs if (here / d).resolve() not in excluded)
        for name in sorted(names):
            path = here / name
            if path.is_file():
                out.append(path)
    return out


_PATIENT_ID_TAG = frozenset({0x00100020})


def read_patient_id(path: Path) -> str:
    """PatientID (kept in memory only, to derive the subject pseudonym)."""
    try:
        parsed = rawheader.parse(path, _PATIENT_ID_TAG, frozenset())
        if parsed is not None:
            return str(parsed[0].get("PatientID", "") or "").strip()
    except Exception:  # the fast path is optional; pydicom below is the reference
        pass
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"], force=True)
        return str(ds.get("PatientID", "") or "").strip()
    except Exception:
        return ""


_EMPTY_MESSAGE = "the file is empty (0 bytes); re-export or remove it"
#: Skip code of DICOM SEG instances: not a bad file, a label map for the series it references.
SEGMENTATION_CODE = "segmentation_object"
_SEGMENTATION_MESSAGE = ("DICOM SEG (segmentation object): not converted to an image volume; used as the label "
                         "map of the series it references (medcore.dicom.seg_align), nothing to fix")


def is_segmentation(path: Path) -> bool:
    """True when ``path`` is a DICOM Segmentation Storage instance (header read only; never raises)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        return str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE
    except Exception:
        return False


def read_file_and_patient(path: Path) -> tuple[list[Frame] | None, str, str | None, str]:
    """``(frames, patient_id, error_code, error_message)`` from one read of the file; never raises.

    The PatientID is PHI: it stays in memory (see :meth:`ScanResult.patient_id_of`).
    """
    try:
        frames, patient = read_frames_and_patient(path)
    except DicomFrameError as exc:
        if exc.code == "empty_file":
            return None, "", "empty_file", _EMPTY_MESSAGE
        if exc.code == "unsupported_sop_class" and is_segmentation(path):
            return None, "", SEGMENTATION_CODE, _SEGMENTATION_MESSAGE
        return None, "", exc.code, exc.reason
    except Exception as exc:  # a reader bug must not stop the scan
        return None, "", "unreadable", f"{type(exc).__name__}: {exc}"
    if not frames:
        return None, "", "unsupported_image", "no image frames in the file"
    return frames, patient.strip(), None, ""


def _scan_chunk(paths: Sequence[Path]) -> list[tuple]:
    return [read_file_and_patient(p) for p in paths]


def _frame_row(frame: Frame) -> dict:
    return {name: getattr(frame, name) for name in _FRAME_COLUMNS}


def scan_tree(root: str | os.PathLike, *, workers: int | None = None, progress: bool = False,
              exclude: Iterable[Path] = ()) -> ScanResult:
    """Read every header below ``root``; skip non-image files with a reason code."""
    root = Path(root)
    files = list_files(root, exclude)
    workers = max(1, workers if workers is not None else min(os.cpu_count() or 1, 8))
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(files), desc="scan", unit="file")
    results: list[tuple] = []
    if workers > 1 and len(files) >= POOL_MIN_FILES:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for chunk, res in zip(chunks, pool.map(_scan_chunk, chunks)):
                results.extend(res)
                if bar is not None:
                    bar.update(len(chunk))
    else:
        for chunk in chunks:
            results.extend(_scan_chunk(chunk))
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()

    return assemble(root, files, results)


def assemble(root: Path, files: list[Path], results: Sequence[tuple]) -> ScanResult:
    """The :class:`ScanResult` of ``files`` from their :func:`read_file_and_patient` results."""
    frames: list[Frame] = []
    rows: list[dict] = []
    skipped: list[dict] = []
    patients: dict[int, str] = {}
    for file_idx, (file_frames, patient, code, message) in enumerate(results):
        if file_frames is None:
            skipped.append({"file": file_idx, "code": code, "message": message})
            continue
        patients[file_idx] = patient
        for frame in file_frames:
            row = _frame_row(frame)
            row["file"] = file_idx
            rows.append(row)
            frames.append(frame)
    index = pd.DataFrame(rows, columns=[*_FRAME_COLUMNS, "file"])
    return ScanResult(root=root, files=files, frames=frames, index=index,
                      skipped=pd.DataFrame(skipped, columns=["file", "code", "message"]), _patients=patients)


_UID_COLUMNS = ("sop_instance_uid", "study_uid", "series_uid")
_SAFE_COLUMNS = ("frame_index", "sop_class_uid", "series_number", "modality", "image_type", "rows", "cols",
                 "iop", "ipp", "pixel_spacing", "slice_thickness", "slope", "intercept", "echo_number",
                 "echo_time", "temporal_position", "acquisition_number", "trigger_time",
                 "instance_number", "is_localizer", "transfer_syntax_uid", "number_of_frames",
                 "is_mosaic")


def deidentified_index(scan: ScanResult, deid) -> pd.DataFrame:
    """The frame index with PHI removed: keyed file ids, remapped UIDs, subject pseudonyms."""
    idx = scan.index
    out = pd.DataFrame(index=idx.index)
    ids: dict[int, str] = {}
    for i in idx["file"].unique() if len(idx) else []:
        ids[int(i)] = file_id(deid, scan.files[int(i)].relative_to(scan.root).as_posix())
    out["file_id"] = [ids[int(i)] for i in idx["file"]] if len(idx) else []
    first_file = idx.groupby("series_uid")["file"].first().to_dict() if len(idx) else {}
    subjects = {uid: deid.subject(scan.patient_id_of(int(f))) for uid, f in first_file.items()}
    out["subject"] = [subjects[u] for u in idx["series_uid"]] if len(idx) else []
    for col in _UID_COLUMNS:
        out[col] = [deid.uid(u) for u in idx[col]] if len(idx) else []
    for col in _SAFE_COLUMNS:
        if col in idx:
            values = idx[col]
            if col == "image_type":
                values = values.map(lambda v: None if v is None else [str(x) for x in v])
            elif col in ("iop", "ipp", "pixel_spacing"):
                values = values.map(lambda v: None if v is None else [float(x) for x in v])
            out[col] = values
    return out.reset_index(drop=True)

