"""Stage ``convert``: DICOM study -> NIfTI volumes, sidecars and quarantine; then match label masks."""

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

    folder = study_folder(params, deid, key)
    final = Layout.from_params(params).converted_dir(key)
    sweep_tmp(final.parent)
    with atomic_dir(final) as tmp:
        report = convert_tree(folder, tmp, deid=deid, progress=False, workers=1)
    return {"study": key, "series_written": len(report.series), "stacks_refused": len(report.refused),
            "files_in": report.files_in, "files_converted": report.files_converted,
            "files_quarantined": report.files_quarantined, "quarantine": report.quarantine_counts(),
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


def match_labels(params: dict, key: str, deid) -> dict:
    """Copy each mask whose (de-identified) SeriesInstanceUID matches a converted series into ``labels/<key>/``.

    Masks are re-written with a clean NIfTI header (nothing from the source header is kept).
    Misaligned masks are left out and listed with the reason.
    """
    import nibabel as nib

    from medcore.data.synthetic import read_label_manifest

    layout = Layout.from_params(params)
    manifest = resolve(params, params["source"]["label_manifest"])
    names, masks = read_label_manifest(manifest, uid_map=deid.uid) if manifest.is_file() else ({}, {})
    series = converted_series(params, key)
    entries, misaligned = [], []
    final = labels_dir(layout, key)
    sweep_tmp(final.parent)
    with atomic_dir(final) as tmp:
        for row in series.itertuples():
            mask = masks.get(row.series_uid)
            if mask is None:
                continue
            image_path = layout.converted_dir(key) / row.nifti
            problem = alignment_problem(image_path, mask)
            if problem:
                misaligned.append({"series_id": row.series_id, "reason": problem})
                continue
            src = nib.load(str(mask))
            data = np.rint(np.asarray(src.dataobj)).astype(np.uint8)
            clean = nib.Nifti1Image(data, src.affine)
            clean.set_qform(src.affine, code=1)
            clean.set_sform(src.affine, code=1)
            nib.save(clean, str(tmp / f"{row.series_id}.nii.gz"))
            entries.append({"series_id": row.series_id, "image": str(Path("converted") / key / row.nifti),
                            "label": str(Path("labels") / key / f"{row.series_id}.nii.gz")})
        write_json(tmp / LABELS_JSON, {"label_names": {str(k): v for k, v in names.items()},
                                       "pairs": entries, "misaligned": misaligned})
    return {"study": key, "labelled_series": len(entries), "misaligned": misaligned,
            "label_names": {str(k): v for k, v in names.items()}}


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
