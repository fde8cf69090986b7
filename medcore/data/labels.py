"""The label manifest: which label file belongs to which DICOM series, and the label names.

A JSON file (``labels.json``) delivered beside the DICOM::

    {"format": "medcore-label-manifest/1",
     "label_names": {"0": "background", "1": "liver"},
     "series": [{"series_instance_uid": "1.2.3...", "mask": "mask-000.nii.gz", "seg": "seg-000.dcm"}]}

Each entry names the ORIGINAL SeriesInstanceUID and at least one of ``mask`` (a NIfTI on the
series' voxel grid) and ``seg`` (a DICOM SEG referencing the series), relative to the manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["LABEL_MANIFEST_FORMAT", "LABEL_MANIFEST_NAME", "read_label_manifest", "read_label_sources"]

LABEL_MANIFEST_NAME = "labels.json"
LABEL_MANIFEST_FORMAT = "medcore-label-manifest/1"


UidMap = Callable[[str], str]


def read_label_sources(
    path: str | os.PathLike, uid_map: UidMap | None = None
) -> tuple[dict[int, str], dict[str, dict[str, Path]]]:
    """Label names and ``SeriesInstanceUID -> {"mask": NIfTI path, "seg": DICOM SEG path}`` (either or both).

    An entry needs ``series_instance_uid`` and at least one of ``mask`` (NIfTI on the series' voxel
    grid) and ``seg`` (a DICOM SEG referencing the series). ``uid_map`` as in :func:`read_label_manifest`.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read label manifest ({exc}); expected JSON in the "
                         "layout described in medcore.data.labels") from exc
    if not isinstance(doc, dict) or doc.get("format") != LABEL_MANIFEST_FORMAT:
        raise ValueError(f"{path}: label manifest format {doc.get('format') if isinstance(doc, dict) else None!r}, "
                         f"expected {LABEL_MANIFEST_FORMAT!r}")
    names = {int(k): str(v) for k, v in doc.get("label_names", {}).items()}
    sources: dict[str, dict[str, Path]] = {}
    for i, entry in enumerate(doc.get("series", [])):
        if not isinstance(entry, dict) or "series_instance_uid" not in entry or not ({"mask", "seg"} & set(entry)):
            raise ValueError(f"{path}: series entry {i} lacks 'series_instance_uid' or both 'mask' and 'seg'; "
                             "give the series UID and a NIfTI mask and/or a DICOM SEG file")
        uid = str(entry["series_instance_uid"])
        files = {kind: path.parent / str(entry[kind]) for kind in ("mask", "seg") if entry.get(kind)}
        sources[uid_map(uid) if uid_map else uid] = files
    return names, sources


def read_label_manifest(
    path: str | os.PathLike, uid_map: UidMap | None = None
) -> tuple[dict[int, str], dict[str, Path]]:
    """Label names and ``SeriesInstanceUID -> mask path`` from a label manifest (JSON).

    Pass ``uid_map=Deidentifier(key).uid`` to key the result by de-identified UIDs, which is how
    converted series are named after ingestion. Entries with only a DICOM SEG are left out (see
    :func:`read_label_sources`).
    """
    names, sources = read_label_sources(path, uid_map)
    return names, {uid: files["mask"] for uid, files in sources.items() if "mask" in files}
