"""Stage ``convert``: DICOM study -> NIfTI volumes, sidecars and quarantine; then match labels (NIfTI or DICOM SEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.params import resolve
from pipelines.steps.ingest import deidentifier, list_studies, study_folder
from pipelines.steps.layout import Layout, atomic_dir, labels_dir, read_json, sweep_tmp, write_json

LABELS_JSON = "labels.json"
AFFINE_TOLERANCE_MM = 1e-3


def convert_study(params: dict, key: str, deid) -> dict:
    """Convert one study into ``converted/<key>/`` (replaced as a whole, so a crash leaves no partial tree)."""
    from medcore.dicom.convert import convert_tree
    from medcore.dicom.scan import SEGMENTATION_CODE

    folder = study_folder(params, deid, key)
    final = Layout.from_params(params).converted_dir(key)
    sweep_tmp(final.parent)
    with atomic_dir(final) as tmp:
        report = convert_tree(folder, tmp, deid=deid, progress=False, workers=1)
    bad = {k: v for k, v in report.quarantine_counts().items() if k != SEGMENTATION_CODE}
    return {"study": key, "series_written": len(report.series), "stacks_refused": len(report.refused),
            "files_in": report.files_in, "files_converted": report.files_converted,
            "files_quarantined": report.files_quarantined - report.files_segmentation, "quarantine": bad,
            "segmentation_objects": report.files_segmentation,
            "series": [{"series_id": r.series_id, "nifti": r.nifti, "shape": r.shape, "voxel_size": r.voxel_size}
                       for r in report.series]}


def converted_series(params: dict, key: str):
    """The series table written by conversion (a pandas DataFrame)."""
    import pandas as pd

    path = Layout.from_params(params).converted_dir(key) / "series_index.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"study {key}: {path} is missing; materialise nifti_volumes for this study first")
    return pd.read_parquet(path)


def alignment_problem(image_path: Path, mask_path: Path) -> str | None:
    """Why a mask does not lie on its image's voxel grid, or None when it does."""
    import nibabel as nib

    img, mask = nib.load(str(image_path)), nib.load(str(mask_path))
    if tuple(img.shape[:3]) != tuple(mask.shape[:3]):
        return f"shape {tuple(mask.shape)} differs from the image's {tuple(img.shape)}"
    diff = float(np.abs(np.asarray(img.affine) - np.asarray(mask.affine)).max())
    if diff > AFFINE_TOLERANCE_MM:
        return f"affine differs from the image's by up to {diff:.4g} mm"
    return None


def study_seg_files(params: dict, key: str, deid) -> list[Path]:
    """DICOM SEG instances among the study's DICOM files (conversion listed them as ``segmentation_object``).

    Local paths, in memory only: they may hold PHI and are never written.
    """
    import pandas as pd

    from medcore.dicom.quarantine import file_id
    from medcore.dicom.scan import SEGMENTATION_CODE, list_files

    table = Layout.from_params(params).converted_dir(key) / "quarantine.parquet"
    if not table.is_file():
        raise FileNotFoundError(f"study {key}: {table} is missing; materialise nifti_volumes for this study first")
    q = pd.read_parquet(table)
    wanted = set(q.loc[q["code"] == SEGMENTATION_CODE, "file_id"])
    if not wanted:
        return []
    folder = study_folder(params, deid, key)
    return [p for p in list_files(folder) if file_id(deid, p.relative_to(folder).as_posix()) in wanted]


def _segs_by_series(paths: list[Path], deid) -> tuple[dict[str, list[Path]], int]:
    """``{de-identified referenced series UID: SEG files}`` and how many SEGs reference no series."""
    from medcore.dicom.seg import SegmentationError, referenced_series_uids

    out: dict[str, list[Path]] = {}
    unreferenced = 0
    for path in paths:
        try:
            refs = referenced_series_uids(path)
        except SegmentationError:
            refs = []
        unreferenced += not refs
        for uid in refs:
            out.setdefault(deid.uid(uid), []).append(path)
    return out, unreferenced


def _seg_on_image(seg: Path, image: Path, series_uid: str, deid, names: dict[int, str]):
    """``(AlignedSeg, None)`` or ``(None, reason)``; reasons carry no path and no SEG free text."""
    from medcore.dicom.seg import SegmentationError
    from medcore.dicom.seg_align import SegAlignmentError, seg_on_image_grid

    try:
        return seg_on_image_grid(seg, image, label_names=names, series_uid=series_uid, uid_map=deid.uid), None
    except SegAlignmentError as exc:
        return None, f"DICOM SEG: {exc.reason}"
    except SegmentationError:
        return None, ("DICOM SEG: the file could not be read as a segmentation (check it with "
                      "medcore.dicom.seg.read_seg_frames)")


def _label_source(series_uid: str, manifest: dict[str, dict[str, Path]], folder_segs: dict[str, list[Path]]):
    """``(kind, path, problem)`` for one series: manifest NIfTI mask, else manifest SEG, else the study's own SEG."""
    entry = manifest.get(series_uid, {})
    if "mask" in entry:
        return "nifti", entry["mask"], None
    if "seg" in entry:
        return "seg", entry["seg"], None
    found = folder_segs.get(series_uid, [])
    if len(found) > 1:
        return "seg", None, (f"{len(found)} DICOM SEG instances in the study reference this series; keep one, or "
                             "name the one to use in the label manifest under 'seg'")
    return ("seg", found[0], None) if found else (None, None, None)


def _write_label(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A label NIfTI with a clean header: nothing from any source header is kept."""
    import nibabel as nib

    clean = nib.Nifti1Image(data, affine)
    clean.set_qform(affine, code=1)
    clean.set_sform(affine, code=1)
    nib.save(clean, str(path))


def match_labels(params: dict, key: str, deid) -> dict:
    """Write a label map for each converted series that has one into ``labels/<key>/``.

    Sources, one per series, in this order of preference: the label manifest's NIfTI ``mask``, the
    manifest's DICOM ``seg``, a DICOM SEG found among the study's DICOM files that references the
    series (matched by de-identified ReferencedSeriesInstanceUID). SEGs are placed on the image
    grid by world coordinates (:mod:`medcore.dicom.seg_align`; overlapping segments are refused);
    segments get the manifest's label value whose name equals their SegmentLabel, else their
    SegmentNumber. Only pixels and geometry are kept: no SEG header value, and no SegmentLabel text,
    reaches an output. Labels that do not fit their image are left out and listed in ``misaligned``.
    ``labels.json`` records the source kind (``nifti`` or ``seg``) of each pair.
    """
    import nibabel as nib

    from medcore.data.synthetic import read_label_sources

    layout = Layout.from_params(params)
    manifest = resolve(params, params["source"]["label_manifest"])
    names, sources = read_label_sources(manifest, uid_map=deid.uid) if manifest.is_file() else ({}, {})
    series = converted_series(params, key)
    folder_segs, unreferenced = _segs_by_series(study_seg_files(params, key, deid), deid)
    converted_uids = set(series["series_uid"])
    unmatched = unreferenced + sum(len(v) for u, v in folder_segs.items() if u not in converted_uids)
    out_names = {int(k): v for k, v in names.items()}
    entries, misaligned = [], []
    final = labels_dir(layout, key)
    sweep_tmp(final.parent)
    with atomic_dir(final) as tmp:
        for row in series.itertuples():
            kind, source, problem = _label_source(row.series_uid, sources, folder_segs)
            if kind is None:
                continue
            image_path = layout.converted_dir(key) / row.nifti
            entry = {"series_id": row.series_id, "image": str(Path("converted") / key / row.nifti),
                     "label": str(Path("labels") / key / f"{row.series_id}.nii.gz"), "source": kind}
            if problem is None and kind == "nifti":
                problem = alignment_problem(image_path, source)
                if problem is None:
                    src = nib.load(str(source))
                    data, affine = np.rint(np.asarray(src.dataobj)).astype(np.uint8), src.affine
            elif problem is None:
                aligned, problem = _seg_on_image(source, image_path, row.series_uid, deid, names)
                if aligned is not None:
                    data, affine = aligned.labels, aligned.affine
                    entry["segments"] = [{"number": n, "value": v, "matched_by": aligned.matched_by[n]}
                                         for n, v in sorted(aligned.values.items())]
                    for v in aligned.values.values():
                        out_names.setdefault(v, f"segment_{v}")
                    out_names.setdefault(0, "background")
            if problem:
                misaligned.append({"series_id": row.series_id, "source": kind, "reason": problem})
                continue
            _write_label(tmp / f"{row.series_id}.nii.gz", data, affine)
            entries.append(entry)
        label_names = {str(k): v for k, v in sorted(out_names.items())}
        write_json(tmp / LABELS_JSON, {"label_names": label_names, "pairs": entries, "misaligned": misaligned,
                                       "unmatched_seg_files": unmatched})
    return {"study": key, "labelled_series": len(entries), "misaligned": misaligned, "label_names": label_names,
            "sources": {k: sum(e["source"] == k for e in entries) for k in ("nifti", "seg")},
            "unmatched_seg_files": unmatched}


def study_labels(params: dict, key: str) -> dict:
    path = labels_dir(Layout.from_params(params), key) / LABELS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"study {key}: {path} is missing; materialise labels for this study first")
    return read_json(path)


def convert_all(params: dict) -> list[dict]:
    deid = deidentifier(params)
    out = []
    for key in list_studies(params, deid):
        info = convert_study(params, key, deid)
        info["labels"] = match_labels(params, key, deid)
        out.append(info)
    return out
