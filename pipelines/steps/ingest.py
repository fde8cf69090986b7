"""Stage ``ingest``: find studies in the inbox and write each one's de-identified header index."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from medcore.utils.atomic import sweep_tmp
from pipelines.params import resolve
from pipelines.steps.layout import Layout
from pipelines.steps.results import RawStudy, StudyIndex, load, save

SERIES_INDEX = "series_index.parquet"


def deidentifier(params: dict):
    """The keyed de-identifier (key from $MEDCORE_DEID_KEY or a key file outside data and outputs)."""
    from medcore.dicom.deid import Deidentifier, load_or_create_key

    forbidden = [resolve(params, params["output_dir"]), resolve(params, params["source"]["dicom_dir"])]
    key_file = params["deid_key_file"]
    key = load_or_create_key(resolve(params, key_file) if key_file else None, forbidden_roots=forbidden)
    return Deidentifier(key)


def study_key(deid, folder_name: str) -> str:
    """A partition key for an inbox study folder: a keyed hash, so a folder named after a patient leaks nothing."""
    return "study-" + hashlib.sha256(deid.uid("medcore-inbox-study:" + folder_name).encode()).hexdigest()[:12]


def list_studies(params: dict, deid) -> dict[str, Path]:
    """``{partition key: study folder}`` for each non-hidden sub-folder of the inbox."""
    inbox = resolve(params, params["source"]["dicom_dir"])
    if not inbox.is_dir():
        return {}
    return {study_key(deid, p.name): p for p in sorted(inbox.iterdir()) if p.is_dir() and not p.name.startswith(".")}


def study_folder(params: dict, deid, key: str) -> Path:
    studies = list_studies(params, deid)
    if key not in studies:
        raise FileNotFoundError(f"study partition {key}: no matching folder in the inbox "
                                f"{resolve(params, params['source']['dicom_dir'])}; was it moved or renamed?")
    return studies[key]


def folder_signature(folder: Path) -> dict:
    """File count, total bytes and newest modification time: it changes while a copy is in progress."""
    n = size = newest = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            n, size, newest = n + 1, size + st.st_size, max(newest, st.st_mtime_ns)
    return {"files": n, "bytes": size, "mtime_ns": newest}


def is_ingested(params: dict, key: str, folder: Path) -> bool:
    """Whether study ``key`` was recorded with the file count and bytes its folder has now."""
    path = Layout.from_params(params).raw_manifest(key)
    if not path.is_file():
        return False
    raw, now = load(path, RawStudy), folder_signature(folder)
    return (raw.files, raw.bytes) == (now["files"], now["bytes"])


def record_raw(params: dict, key: str, deid) -> RawStudy:
    """Write ``raw/<key>.json`` (file count, bytes, content hash of the study; no names) and return it."""
    folder = study_folder(params, deid, key)
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        h.update(hashlib.sha256(p.relative_to(folder).as_posix().encode()).digest())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    info = RawStudy(key, len(files), sum(p.stat().st_size for p in files), h.hexdigest())
    save(Layout.from_params(params).raw_manifest(key), info)
    return info


def ingest_study(params: dict, key: str, deid) -> StudyIndex:
    """Scan one study and write its de-identified header index (parquet). Returns summary metadata."""
    from medcore.dicom.scan import deidentified_index, scan_tree
    from medcore.utils.atomic import atomic_path

    folder = study_folder(params, deid, key)
    out = Layout.from_params(params).index_dir(key)
    out.mkdir(parents=True, exist_ok=True)
    sweep_tmp(out)
    scan = scan_tree(folder, workers=1, progress=False)
    index = deidentified_index(scan, deid)
    with atomic_path(out / SERIES_INDEX) as tmp:
        index.to_parquet(tmp, index=False)
    n_series = int(index["series_uid"].nunique()) if "series_uid" in index and len(index) else 0
    return StudyIndex(key, scan.n_files, len(index), n_series, len(scan.skipped), str(out / SERIES_INDEX))


def ingest_all(params: dict) -> list[StudyIndex]:
    deid = deidentifier(params)
    results = []
    for key in list_studies(params, deid):
        record_raw(params, key, deid)
        results.append(ingest_study(params, key, deid))
    return results
