"""Blocking asset checks: geometry sanity, label-to-image alignment, PHI scan, minimum Dice."""


from pathlib import Path

import numpy as np
from dagster import AssetCheckExecutionContext, AssetCheckResult, asset_check

from pipelines.assets import EvaluateConfig, evaluation, labels, nifti_volumes, study_partitions
from pipelines.resources import PipelineSettings

# DICOM attributes whose values are identifying; the PHI scan looks for them in the outputs
PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber",
                "InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
                "OperatorsName", "StudyID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "FrameOfReferenceUID", "StudyDescription", "SeriesDescription", "PatientAddress",
                "PatientTelephoneNumbers", "StationName", "DeviceSerialNumber", "MedicalRecordLocator")


def geometry_problems(folder: Path) -> list[str]:
    """Each NIfTI under ``folder`` must have a finite, invertible affine and positive voxel sizes."""
    import nibabel as nib

    problems = []
    for path in sorted(folder.rglob("*.nii*")):
        img = nib.load(str(path))
        a = np.asarray(img.affine, dtype=float)
        zooms = img.header.get_zooms()[:3]
        if not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-9:
            problems.append(f"{path.name}: affine is not finite or is singular")
        elif min(zooms) <= 0 or not np.allclose(np.linalg.norm(a[:3, :3], axis=0), zooms, rtol=1e-3, atol=1e-4):
            problems.append(f"{path.name}: voxel sizes {zooms} disagree with the affine")
        if len(img.shape) < 3:
            problems.append(f"{path.name}: {len(img.shape)}D, expected a volume")
    return problems


def source_phi_values(study: Path) -> set[str]:
    """Identifying values read from the study's DICOM headers (one file per folder)."""
    import pydicom

    values: set[str] = set()
    folders: dict[Path, Path] = {}
    for f in sorted(study.rglob("*")):
        if f.is_file():
            folders.setdefault(f.parent, f)
    for f in folders.values():
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
        except Exception:  # unreadable files are quarantined by conversion, not scanned here
            continue
        for kw in PHI_KEYWORDS:
            v = ds.get(kw)
            for item in (v if isinstance(v, (list, pydicom.multival.MultiValue)) else [v]):
                text = str(item).strip() if item is not None else ""
                if len(text) >= 6:
                    values.add(text)
    return values


def find_values(folder: Path, values: set[str]) -> list[str]:
    """``file: value`` for each value found in any file under ``folder`` (binary search of raw bytes;
    compressed NIfTI is searched after decompression)."""
    import gzip

    hits = []
    needles = [(v, v.encode("utf-8", "ignore")) for v in values]
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            try:
                data = gzip.decompress(data)
            except OSError:
                pass
        hits += [f"{path.name}: {v[:2]}***" for v, n in needles if n in data]
    return hits


@asset_check(asset=nifti_volumes, blocking=True, partitions_def=study_partitions)
def geometry_sanity(context: AssetCheckExecutionContext, settings: PipelineSettings) -> AssetCheckResult:
    from pipelines.steps.layout import Layout

    folder = Layout.from_params(settings.params()).converted_dir(context.partition_key)
    problems = geometry_problems(folder)
    return AssetCheckResult(passed=not problems, metadata={"problems": "\n".join(problems) or "none"})


@asset_check(asset=nifti_volumes, blocking=True, partitions_def=study_partitions)
def phi_scan(context: AssetCheckExecutionContext, settings: PipelineSettings) -> AssetCheckResult:
    """No identifying header value of the source study appears in any converted file."""
    from pipelines.steps.ingest import deidentifier, study_folder
    from pipelines.steps.layout import Layout

    params = settings.params()
    values = source_phi_values(study_folder(params, deidentifier(params), context.partition_key))
    hits = find_values(Layout.from_params(params).converted_dir(context.partition_key), values)
    return AssetCheckResult(passed=not hits, metadata={"values_checked": len(values), "hits": len(hits)})


@asset_check(asset=labels, blocking=True, partitions_def=study_partitions)
def label_alignment(context: AssetCheckExecutionContext, settings: PipelineSettings) -> AssetCheckResult:
    """Every matched mask lies on its image's voxel grid (shape and affine)."""
    from pipelines.steps.convert import study_labels

    info = study_labels(settings.params(), context.partition_key)
    bad = info["misaligned"]
    return AssetCheckResult(
        passed=not bad,
        metadata={
            "pairs": len(info["pairs"]),
            "misaligned": len(bad),
            "reasons": "\n".join(f"{b['series_id']}: {b['reason']}" for b in bad) or "none",
        },
    )


@asset_check(asset=evaluation, blocking=True)
def minimum_dice(config: EvaluateConfig, settings: PipelineSettings) -> AssetCheckResult:
    """The mean foreground Dice must reach ``min_dice`` before the model may be registered."""
    from pipelines.steps.layout import Layout, read_json

    params = settings.params()
    min_dice = float(params["evaluate"]["min_dice"] if config.min_dice is None else config.min_dice)
    summary = read_json(Layout.from_params(params).evaluation_dir / "summary.json")
    return AssetCheckResult(passed=summary["mean_dice"] >= min_dice,
                            metadata={"mean_dice": float(summary["mean_dice"]), "min_dice": min_dice})


ALL_CHECKS = [geometry_sanity, phi_scan, label_alignment, minimum_dice]
