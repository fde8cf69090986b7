"""Stage ``convert``: DICOM study -> NIfTI volumes, sidecars and quarantine; then match labels (NIfTI or DICOM SEG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medcore.data.labels import read_label_sources
from medcore.dicom.phi import class_name, identifying_words, source_phi_values
from medcore.io import Image, load_image, save_image
from medcore.io.checks import grid_mismatch
from medcore.utils.atomic import atomic_dir, sweep_tmp
from pipelines.params import resolve
from pipelines.steps.ingest import deidentifier, list_studies, study_folder
from pipelines.steps.layout import Layout, read_json, write_json
from pipelines.steps.results import ConvertedStudy, Misaligned, SeriesWritten, StudyLabels, to_json

LABELS_JSON = "labels.json"


def convert_study(params: dict, key: str, deid) -> ConvertedStudy:
    """Convert one study into ``converted/<key>/`` (replaced as a whole, so a crash leaves no partial tree)."""
    from medcore.dicom.convert import convert_tree
    from medcore.dicom.scan import SEGMENTATION_CODE

    folder = study_folder(params, deid, key)
    final = Layout.from_params(params).converted_dir(key)
    sweep_tmp(final.parent)
    with atomic_dir(final) as tmp:
        report = convert_tree(folder, tmp, deid=deid, progress=False, workers=1)
    bad = {k: v for k, v in report.quarantine_counts().items() if k != SEGMENTATION_CODE}
    series = tuple(SeriesWritten(r.series_id, r.nifti, tuple(r.shape), tuple(r.voxel_size)) for r in report.series)
    return ConvertedStudy(key, len(report.series), len(report.refused), report.files_in, report.files_converted,
                          report.files_quarantined - report.files_segmentation, bad, report.files_segmentation,
                          series)


def converted_series(params: dict, key: str):
    """The series table written by conversion (a pandas DataFrame)."""
    import pandas as pd

    path = Layout.from_params(params).converted_dir(key) / "series_index.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"study {key}: {path} is missing; materialise nifti_volumes for this study first")
    return pd.read_parquet(path)


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


def _manifest_mask(image: Path, mask: Path) -> tuple[np.ndarray | None, np.ndarray | None, str | None]:
    """``(labels, affine, None)`` of a manifest NIfTI mask on its image's grid, or ``(None, None, reason)``."""
    problem = grid_mismatch(image, mask)
    if problem is not None:
        return None, None, problem
    src = load_image(mask)
    return np.rint(src.data[0].numpy()).astype(np.uint8), src.affine.numpy(), None


def seg_class_names(seg: Path, identifying: set[str]) -> dict[int, str]:
    """``{SegmentNumber: class name}`` for the SEG's SegmentLabels that :func:`medcore.dicom.phi.class_name`
    accepts (no digits, no word of the study's identifying values); the others are left out."""
    from medcore.dicom.seg import SegmentationError, read_seg_frames

    try:
        segments = read_seg_frames(seg).segments
    except SegmentationError:
        return {}
    named = {n: class_name(label, identifying) for n, label in segments.items()}
    return {n: name for n, name in named.items() if name}


def _write_label(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """A label NIfTI with a clean header: nothing from any source header is kept."""
    save_image(Image(torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))[None], torch.from_numpy(affine)),
               path)


def match_labels(params: dict, key: str, deid) -> StudyLabels:
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
    layout = Layout.from_params(params)
    manifest = resolve(params, params["source"]["label_manifest"])
    names, sources = read_label_sources(manifest, uid_map=deid.uid) if manifest.is_file() else ({}, {})
    series = converted_series(params, key)
    folder_segs, unreferenced = _segs_by_series(study_seg_files(params, key, deid), deid)
    converted_uids = set(series["series_uid"])
    unmatched = unreferenced + sum(len(v) for u, v in folder_segs.items() if u not in converted_uids)
    out_names = {int(k): v for k, v in names.items()}
    any_seg = bool(folder_segs) or any("seg" in files for files in sources.values())
    identifying = identifying_words(source_phi_values(study_folder(params, deid, key))) if any_seg else set()
    entries: list[dict] = []
    misaligned: list[Misaligned] = []
    final = layout.labels_dir(key)
    sweep_tmp(final.parent)
    with atomic_dir(final) as tmp:
        for row in series.itertuples():
            kind, source, problem = _label_source(row.series_uid, sources, folder_segs)
            if kind is None:
                continue
            image_path = layout.converted_dir(key) / row.nifti
            entry = {"series_id": row.series_id, "image": str(Path("converted") / key / row.nifti),
                     "label": str(Path("labels") / key / f"{row.series_id}.nii.gz"), "source": kind,
                     "subject": row.subject, "modality": row.modality}
            data = affine = None
            if problem is None and kind == "nifti":
                data, affine, problem = _manifest_mask(image_path, source)
            elif problem is None:
                aligned, problem = _seg_on_image(source, image_path, row.series_uid, deid, names)
                if aligned is not None:
                    data, affine = aligned.labels, aligned.affine
                    entry["segments"] = [{"number": n, "value": v, "matched_by": aligned.matched_by[n]}
                                         for n, v in sorted(aligned.values.items())]
                    seg_names = seg_class_names(source, identifying)
                    for number, v in aligned.values.items():
                        out_names.setdefault(v, seg_names.get(number) or f"segment_{v}")
                    out_names.setdefault(0, "background")
            if problem or data is None or affine is None:
                misaligned.append(Misaligned(row.series_id, kind, problem or "no label data"))
                continue
            _write_label(tmp / f"{row.series_id}.nii.gz", data, affine)
            entries.append(entry)
        label_names = {str(k): v for k, v in sorted(out_names.items())}
        write_json(tmp / LABELS_JSON, {"label_names": label_names, "pairs": entries,
                                       "misaligned": to_json(misaligned), "unmatched_seg_files": unmatched})
    return StudyLabels(key, len(entries), tuple(misaligned), label_names,
                       {k: sum(e["source"] == k for e in entries) for k in ("nifti", "seg")}, unmatched)


def study_labels(params: dict, key: str) -> dict:
    """The study's ``labels.json``: label names, image/label pairs, misaligned labels (as written by match_labels)."""
    path = Layout.from_params(params).labels_dir(key) / LABELS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"study {key}: {path} is missing; materialise labels for this study first")
    return read_json(path)


def convert_all(params: dict) -> list[tuple[ConvertedStudy, StudyLabels]]:
    """Convert every inbox study and match its labels (the DVC stage)."""
    deid = deidentifier(params)
    return [(convert_study(params, key, deid), match_labels(params, key, deid)) for key in list_studies(params, deid)]
