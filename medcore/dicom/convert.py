"""Convert a DICOM tree to NIfTI volumes + JSON sidecars, with a quarantine for everything else.

Flow: :func:`~medcore.dicom.scan.scan_tree` (headers only) -> :func:`~medcore.dicom.group.group_frames`
-> per stack :func:`~medcore.dicom.validate.plan_stack` -> decode -> optional resample -> write
(NIfTI, JSON sidecar with the BIDS timing fields of :mod:`~medcore.dicom.timing`, and ``.bval`` /
``.bvec`` from :mod:`~medcore.dicom.diffusion`).
Stacks are converted one at a time per worker, so memory follows the largest series, not the
tree. Output paths are built from pseudonyms only (``sub-*/ses-*/sub-*_ses-*_ser-NNN-<hash>``),
never from input names. Every input file ends either in a written series or in the quarantine
table, and :class:`ConversionReport` checks ``files_in == files_converted + files_quarantined``.
DICOM SEG instances are listed there too, with code ``segmentation_object`` (not an error: they are
label maps, placed on their series' grid by :mod:`medcore.dicom.seg_align`).

:func:`load_series` reads one series into memory (array, RAS affine, meta) with the same
geometry rules, for callers that want an image rather than files.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pydicom

from medcore.dicom.decode import load_pixels, to_real_values
from medcore.dicom.deid import Deidentifier, load_or_create_key
from medcore.dicom.diffusion import diffusion_tables
from medcore.dicom.frame import DecodeError, Frame
from medcore.dicom.group import StackGroup, group_frames, image_component, temporal_key
from medcore.dicom.nifti import GZIP_LEVEL, write_nifti, write_sidecar
from medcore.dicom.quarantine import Quarantine
from medcore.dicom.resample import cast_like, resample_stack
from medcore.dicom.scan import SEGMENTATION_CODE, ScanResult, deidentified_index, read_file_and_patient, scan_tree
from medcore.dicom.scan import assemble as assemble_scan
from medcore.dicom.timing import timing_fields
from medcore.dicom.validate import GeometryError, StackPlan, output_affine, plan_stack
from medcore.utils.atomic import atomic_path, atomic_write_text

SERIES_INDEX = "series_index.parquet"
#: Name suffix of a stack when one series holds copies in several SOP class families.
SOP_FAMILY_SUFFIX = {"classic": "_classic", "enhanced": "_enhanced", "legacy_enhanced": "_legacy-enhanced"}
QUARANTINE_TABLE = "quarantine.parquet"
SCAN_INDEX = "scan_index.parquet"

#: DICOM header keyword -> (BIDS sidecar key, scale). Times in ms become seconds.
BIDS_KEYS = {
    "Manufacturer": ("Manufacturer", None),
    "ManufacturerModelName": ("ManufacturersModelName", None),
    "SoftwareVersions": ("SoftwareVersions", None),
    "MagneticFieldStrength": ("MagneticFieldStrength", None),
    "BodyPartExamined": ("BodyPartExamined", None),
    "ScanningSequence": ("ScanningSequence", None),
    "SequenceVariant": ("SequenceVariant", None),
    "ScanOptions": ("ScanOptions", None),
    "MRAcquisitionType": ("MRAcquisitionType", None),
    "EchoTime": ("EchoTime", 1e-3),
    "RepetitionTime": ("RepetitionTime", 1e-3),
    "InversionTime": ("InversionTime", 1e-3),
    "FlipAngle": ("FlipAngle", None),
    "SliceThickness": ("SliceThickness", None),
    "SpacingBetweenSlices": ("SpacingBetweenSlices", None),
    "ImagingFrequency": ("ImagingFrequency", None),
    "PixelBandwidth": ("PixelBandwidth", None),
    "EchoTrainLength": ("EchoTrainLength", None),
    "InPlanePhaseEncodingDirection": ("InPlanePhaseEncodingDirectionDICOM", None),
    "PercentPhaseFieldOfView": ("PercentPhaseFOV", None),
    "KVP": ("XRayTubeVoltage", None),
    "XRayTubeCurrent": ("XRayTubeCurrent", None),
    "Exposure": ("XRayExposure", None),
    "ConvolutionKernel": ("ConvolutionKernel", None),
    "GantryDetectorTilt": ("GantryDetectorTiltDICOM", None),
    "ReconstructionDiameter": ("ReconstructionDiameter", None),
    "ContrastBolusAgent": (None, None),  # free text: never copied
}


@dataclass
class SeriesRecord:
    """One written volume (a row of ``series_index.parquet``); contains no PHI."""

    series_id: str
    subject: str
    session: str
    series_uid: str
    series_number: int | None
    modality: str
    nifti: str
    sidecar: str
    shape: list[int]
    voxel_size: list[float]
    dtype: str
    n_files: int
    n_frames: int
    n_volumes: int
    resampled: bool
    issues: list[str] = field(default_factory=list)


@dataclass
class ConversionReport:
    """What :func:`convert_tree` did: written series, quarantine rows and file accounting."""

    out_dir: Path
    series: list[SeriesRecord]
    quarantine: pd.DataFrame
    files_in: int
    files_converted: int
    files_quarantined: int
    refused: list[dict] = field(default_factory=list)  # stacks not written: series, code, message, frames
    local_paths: dict[str, Path] = field(default_factory=dict, repr=False)  # in memory only

    @property
    def balanced(self) -> bool:
        return self.files_in == self.files_converted + self.files_quarantined

    def quarantine_counts(self) -> dict[str, int]:
        if self.quarantine.empty:
            return {}
        return {str(k): int(v) for k, v in self.quarantine["code"].value_counts().sort_index().items()}

    def summary(self) -> str:
        lines = [f"series written: {len(self.series)}, stacks refused: {len(self.refused)}",
                 f"files: {self.files_in} in = {self.files_converted} converted + "
                 f"{self.files_quarantined} quarantined"]
        for code, count in self.quarantine_counts().items():
            if code == SEGMENTATION_CODE:
                lines.append(f"  segmentation objects (DICOM SEG, used as labels, not bad files): {count}")
            else:
                lines.append(f"  quarantined {code}: {count}")
        return "\n".join(lines)

    @property
    def files_segmentation(self) -> int:
        """Input files that are DICOM SEG instances (in the quarantine table with a non-error code)."""
        return self.quarantine_counts().get(SEGMENTATION_CODE, 0)


# ---------------------------------------------------------------------------------------------
# one stack


@dataclass(frozen=True)
class StackTask:
    """Everything a worker needs to convert one stack (picklable)."""

    frames: tuple[Frame, ...]
    temporal: tuple[tuple, ...]
    out_stem: Path | None  # None: return the arrays instead of writing
    compress: bool
    sidecar: dict
    gzip_level: int = GZIP_LEVEL
    refuse: tuple[str, str] | None = None  # (code, message) decided before decoding


def plan_for(frames: Sequence[Frame], temporal: Sequence[tuple]) -> StackPlan:
    """Geometry plan for frames (raises GeometryError)."""
    def arr(values, width):
        out = np.full((len(values), width), np.nan)
        for i, v in enumerate(values):
            if v is not None and len(v) == width:
                out[i] = [float(x) for x in v]
        return out

    thickness = frames[0].spacing_between_slices or frames[0].slice_thickness
    ge = str((frames[0].header or {}).get("Manufacturer", "")).upper().startswith("GE ")
    return plan_stack(arr([f.iop for f in frames], 6), arr([f.ipp for f in frames], 3),
                      arr([f.pixel_spacing for f in frames], 2),
                      [(f.sop_instance_uid, f.frame_index) for f in frames], list(temporal),
                      slice_thickness=thickness, acquisition_keys=[acquisition_key(f, ge) for f in frames])


def acquisition_key(frame: Frame, ge: bool) -> tuple:
    """The values that make two frames at one position different acquisitions (else copies).

    GE numbers the volumes of single-slice EPI by InstanceNumber alone (no temporal position,
    one acquisition time), so for GE (``ge``) the instance number is its vendor index of the volume.
    """
    return (frame.temporal_position, frame.acquisition_number, frame.acquisition_time, frame.trigger_time,
            frame.diffusion_bvalue, frame.diffusion_gradient, frame.echo_number, frame.echo_time,
            frame.dimension_index, frame.instance_number if ge else None)


_PHILIPS_SCALE_SLOPE = 0x2005100E


def _private_float(ds, deep: bool) -> float | None:
    """Philips private scale slope (2005,100E) in ``ds`` (or, if ``deep``, in nested sequences)."""
    if _PHILIPS_SCALE_SLOPE in ds:
        value = ds[_PHILIPS_SCALE_SLOPE].value
        if isinstance(value, (bytes, bytearray)):
            value = struct.unpack("<f", bytes(value[:4]))[0] if len(value) >= 4 else None
        elif isinstance(value, (list, tuple)):
            value = value[0] if value else None
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            return None
    if deep:
        for elem in ds:
            if elem.VR == "SQ":
                for item in elem.value:
                    found = _private_float(item, True)
                    if found is not None:
                        return found
    return None


def philips_scale_slopes(frames: Sequence[Frame]) -> np.ndarray | None:
    """Per-frame Philips private ScaleSlope (2005,100E) for Philips MR, else None.

    With it, Philips MR values become floating-point values ``(PV*RS + RI) / (RS*SS)``
    ("precise" scaling, comparable across series), as dcm2niix does by default.
    """
    first = frames[0]
    if first.modality != "MR" or "philips" not in str((first.header or {}).get("Manufacturer", "")).lower():
        return None
    out = np.empty(len(frames))
    cache: dict[str, tuple] = {}
    for i, f in enumerate(frames):
        key = str(f.path)
        if key not in cache:
            ds = pydicom.dcmread(f.path, stop_before_pixels=True, force=True)
            per = ds.get("PerFrameFunctionalGroupsSequence")
            cache[key] = (_private_float(ds, False), [_private_float(item, True) for item in per] if per else [])
        top, per_frame = cache[key]
        value = per_frame[f.frame_index] if f.frame_index < len(per_frame) else None
        value = top if value is None else value
        if value is None or not np.isfinite(value) or value == 0 or f.slope == 0:
            return None
        out[i] = value
    return out


def check_duplicates(frames: Sequence[Frame], plan: StackPlan) -> None:
    """Dropped copies must hold the same pixels as the frame used in their place.

    Else ``conflicting_duplicates`` (copies sharing a SOPInstanceUID) or ``indistinct_repeats``
    (frames at one position that no acquisition value tells apart).
    """
    if not plan.dropped:
        return
    a = load_pixels([frames[i] for i in plan.dropped])
    b = load_pixels([frames[i] for i in plan.originals])
    differ = [k for k in range(len(plan.dropped)) if not np.array_equal(a[k], b[k])]
    n_identical = len(plan.dropped) - plan.n_repeats
    if any(k < n_identical for k in differ):
        raise GeometryError("conflicting_duplicates",
                            "files share a SOPInstanceUID but hold different pixel data; which copy is right "
                            "cannot be decided - remove the wrong export and convert again")
    if differ:
        raise GeometryError("indistinct_repeats",
                            f"{len(differ)} frames repeat a slice position with different pixels, but no "
                            "acquisition value (temporal position, acquisition number or time, trigger time, "
                            "b-value, gradient, echo, dimension index) tells them apart as volumes; which copy "
                            "is right cannot be decided - remove the extra export and convert again")


def assemble(frames: Sequence[Frame], plan: StackPlan) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode, rescale, order and (if planned) resample; returns (stack, RAS affine, geometry meta).

    ``stack`` is C-ordered ``(vols, slices, rows, cols[, 3])``. Philips MR with a private scale
    slope gets floating-point ("precise") values; see :func:`philips_scale_slopes`.
    """
    ordered = [frames[i] for i in plan.order.ravel()]
    pixels = load_pixels(ordered)
    rgb = ordered[0].samples_per_pixel > 1
    values = pixels if rgb else to_real_values(pixels, ordered, in_place=True)
    scaling: dict = {}
    if not rgb:
        ss = philips_scale_slopes(ordered)
        if ss is not None:
            rs = np.array([f.slope for f in ordered])
            factor = (1.0 / (rs * ss)).astype(np.float32)
            values = values.astype(np.float32) * factor.reshape((-1,) + (1,) * (values.ndim - 1))
            scaling = {"PhilipsFloatScaling": True, "PhilipsScaleSlope": float(ss[0]),
                       "PhilipsRescaleSlope": float(rs[0])}
    stack = values.reshape(plan.n_volumes, plan.n_slices, *values.shape[1:])
    first = frames[int(plan.order[0, 0])]
    meta: dict = {"resampled": False, "scaling": scaling}
    if plan.resample:
        if rgb:
            raise GeometryError("unsupported", "resampling of colour (RGB) stacks is not supported")
        target = plan.target_positions()
        fill = float(np.min(stack))
        out = np.stack([cast_like(resample_stack(stack[v], plan.positions, plan.in_plane_offsets,
                                                 target, fill=fill), stack.dtype)
                        for v in range(plan.n_volumes)])
        meta = {"resampled": True, "scaling": scaling, "reasons": [i for i in plan.issues if i != "duplicate_frames"],
                "method": "linear along the slice normal, bilinear in-plane",
                "source_slice_positions_mm": [round(float(p - plan.positions[0]), 4) for p in plan.positions],
                "output_slice_spacing_mm": round(float(plan.step), 6),
                "gantry_tilt_deg": round(float(plan.tilt_deg), 3), "fill_value": fill}
        stack = out
    affine = output_affine(plan, first.iop, first.ipp, first.pixel_spacing)
    return stack, affine, meta


def _bids_sidecar(frame: Frame) -> dict:
    out: dict = {}
    header = frame.header or {}
    for keyword, (bids, scale) in BIDS_KEYS.items():
        if bids is None or keyword not in header:
            continue
        value = header[keyword]
        if value is None or value == "":
            continue
        if scale is not None:
            try:
                value = round(float(value) * scale, 9)
            except (TypeError, ValueError):
                continue
        elif isinstance(value, (np.generic,)):
            value = value.item()
        elif isinstance(value, tuple):
            value = list(value)
        out[bids] = value
    return out


def _timing(frames: Sequence[Frame], plan: StackPlan, resampled: bool) -> dict:
    """BIDS timing fields of an MR stack, with ``BidsFieldsNotWritten`` giving the reason for each absent one."""
    volumes = [[frames[int(i)] for i in row] for row in plan.order[:2]]
    if volumes[0][0].modality != "MR":
        return {}
    datasets: list[Any] = []
    for volume in volumes:
        try:
            datasets.append(pydicom.dcmread(volume[0].path, stop_before_pixels=True, force=True))
        except Exception:  # the header was read once already; without it only header-free fields remain
            datasets.append(None)
    fields, reasons = timing_fields(volumes, datasets, resampled)
    return {**fields, "BidsFieldsNotWritten": reasons} if reasons else fields


_COPY_MESSAGE = "exact duplicate of another input file (same SOPInstanceUID and frame); the copy was not used"
_REPEAT_MESSAGE = ("pixel-identical copy of another input frame at the same slice position with the same "
                   "acquisition values (an acquisition exported twice); the copy was not used")


def convert_stack(task: StackTask) -> dict:
    """Plan, decode, resample and write one stack. Never raises: returns a status dict."""
    if task.refuse is not None:
        return {"status": "refused", "code": task.refuse[0], "message": task.refuse[1], "bad_files": []}
    frames = list(task.frames)
    temporal = list(task.temporal)
    bad_files: list[tuple[str, str, str]] = []
    for _attempt in range(len(frames) + 1):
        try:
            plan = plan_for(frames, temporal)
            check_duplicates(frames, plan)
            stack, affine, geo = assemble(frames, plan)
            break
        except DecodeError as exc:  # drop the undecodable file, quarantine it, try the rest
            bad = str(exc.path)
            bad_files.append((bad, exc.code, exc.reason))
            keep = [i for i, f in enumerate(frames) if str(f.path) != bad]
            if len(keep) == len(frames) or not keep:
                return {"status": "refused", "code": exc.code, "message": exc.reason, "bad_files": bad_files}
            frames = [frames[i] for i in keep]
            temporal = [temporal[i] for i in keep]
        except GeometryError as exc:
            return {"status": "refused", "code": exc.code, "message": str(exc), "bad_files": bad_files}
        except Exception as exc:  # never let one series stop the run
            return {"status": "refused", "code": "internal_error",
                    "message": f"{type(exc).__name__}: {exc}", "bad_files": bad_files}
    else:  # pragma: no cover - loop always breaks or returns
        return {"status": "refused", "code": "internal_error", "message": "retry limit", "bad_files": bad_files}

    used = sorted({str(frames[i].path) for i in plan.order.ravel()})
    n_identical = len(plan.dropped) - plan.n_repeats
    dropped = {str(frames[i].path): _COPY_MESSAGE if k < n_identical else _REPEAT_MESSAGE
               for k, i in enumerate(plan.dropped)}
    dropped = {path: dropped[path] for path in sorted(set(dropped) - set(used))}
    vol = stack if plan.n_volumes > 1 else stack[0]
    first = frames[int(plan.order[0, 0])]
    rgb = first.samples_per_pixel > 1
    zooms = [float(np.linalg.norm(affine[:3, i])) for i in range(3)]
    result = {"status": "written", "used_files": used, "dropped_files": dropped, "bad_files": bad_files,
              "n_frames": int(plan.order.size), "n_volumes": plan.n_volumes,
              "shape": [int(s) for s in (vol.shape[::-1][1:] if rgb else vol.shape[::-1])],
              "voxel_size": [round(z, 6) for z in zooms], "dtype": str(vol.dtype),
              "resampled": bool(geo["resampled"]), "issues": list(plan.issues)}
    if task.out_stem is None:
        result.update(array=vol, affine=affine, geometry=geo)
        return result
    sidecar = dict(task.sidecar)
    sidecar.update(_bids_sidecar(first))
    sidecar["ImageOrientationPatientDICOM"] = [round(float(x), 8) for x in first.iop or ()]
    sidecar["SliceSpacingMm"] = round(float(plan.step), 6)
    sidecar.update(geo.pop("scaling", {}))
    sidecar["GeometryResampled"] = bool(geo["resampled"])
    if geo["resampled"]:
        sidecar["GeometryResampling"] = geo
    if plan.dropped:
        sidecar["DroppedDuplicateFrames"] = len(plan.dropped)
        sidecar["DroppedDuplicateFramesReason"] = (
            "pixel-identical copies of frames (same SOPInstanceUID and frame, or same slice position with "
            "the same acquisition values) were written once")
    sidecar["SourceFileCount"] = len(used)
    if plan.n_volumes > 1:
        sidecar["NumberOfVolumes"] = plan.n_volumes
    sidecar.update(_timing(frames, plan, bool(geo["resampled"])))
    tr = (first.header or {}).get("RepetitionTime")
    suffix = ".nii.gz" if task.compress else ".nii"
    nii = task.out_stem.with_name(task.out_stem.name + suffix)
    try:
        write_nifti(stack if plan.n_volumes > 1 else stack[0], affine, nii, rgb=rgb,
                    repetition_time=float(tr) / 1000.0 if tr and plan.n_volumes > 1 else None,
                    gzip_level=task.gzip_level)
        tables = diffusion_tables([[frames[int(i)] for i in row] for row in plan.order])
        if tables is not None:
            atomic_write_text(task.out_stem.with_name(task.out_stem.name + ".bval"), tables.bval_text())
            if tables.bvecs is not None:
                atomic_write_text(task.out_stem.with_name(task.out_stem.name + ".bvec"), tables.bvec_text())
            else:
                sidecar["BvecNotWrittenReason"] = tables.reason
        write_sidecar(sidecar, task.out_stem.with_name(task.out_stem.name + ".json"))
    except Exception as exc:
        return {"status": "refused", "code": "write_failed", "message": f"{type(exc).__name__}: {exc}",
                "bad_files": bad_files}
    result["nifti"] = nii
    return result


# ---------------------------------------------------------------------------------------------
# naming


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _suffix(group: StackGroup, sibling_number: int) -> str:
    parts = []
    other = False
    family = ""
    for reason, value in group.split:
        if reason == "echo":
            number = value[0] if value and value[0] is not None and not pd.isna(value[0]) else sibling_number
            parts.append(f"_echo-{int(number)}")
        elif reason == "component":
            if value != "magnitude":
                parts.append(f"_part-{value}")
        elif reason == "localizer":
            if value:
                parts.append("_localizer")
        elif reason == "derived":
            if value:
                parts.append("_derived")
        elif reason == "sop_family":
            family = SOP_FAMILY_SUFFIX[value]
        elif reason == "series_number":
            continue  # already in the name
        else:
            other = True
    if other:
        parts.append(f"_stack-{sibling_number}")
    return "".join(parts) + family


# ---------------------------------------------------------------------------------------------
# the tree


def _default_deid(in_dir: Path, out_dir: Path):
    return Deidentifier(load_or_create_key(forbidden_roots=[in_dir, out_dir]))


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def _tasks(scan: ScanResult, groups: list[StackGroup], deid, out_dir: Path, compress: bool,
           gzip_level: int) -> Iterable[tuple[StackGroup, str, StackTask]]:
    idx = scan.index
    siblings: dict[str, int] = defaultdict(int)
    used_names: set[str] = set()
    for group in groups:
        frames = tuple(scan.frames[i] for i in group.rows)
        first = idx.loc[group.rows[0]]
        files = idx.loc[[group.rows[0], group.rows[-1]], "file"].tolist()
        patients = {scan.patient_id_of(int(f)) for f in files}
        subject = deid.subject(min(patients))
        session = deid.session(first["study_uid"] or "")
        series_uid = deid.uid(group.series_uid)
        siblings[group.series_uid] += 1
        number = first["series_number"]
        number = int(number) if number is not None and not pd.isna(number) else 0
        suffix = _suffix(group, siblings[group.series_uid])
        stem = f"{subject}_{session}_ser-{number:03d}-{_short_hash(series_uid)}{suffix}"
        base, k = stem, 1
        while stem in used_names:
            k += 1
            stem = f"{base}_v{k}"
        used_names.add(stem)
        temporal = tuple(temporal_key(f) for f in frames)
        sidecar = {"Modality": str(first["modality"] or ""), "SeriesNumber": number or None,
                   "ImageType": [str(x) for x in (first["image_type"] or ())],
                   "ImageComponent": image_component(first["image_type"]),
                   "SeriesInstanceUID": series_uid, "StudyInstanceUID": deid.uid(first["study_uid"] or ""),
                   "Subject": subject, "Session": session,
                   "ConversionSoftware": "medcore.dicom", "DeidentificationKeyId": deid.key_id}
        if first["echo_number"] is not None and not pd.isna(first["echo_number"]):
            sidecar["EchoNumber"] = int(first["echo_number"])
        if group.localizer:
            sidecar["Localizer"] = True
        task = StackTask(frames=frames, temporal=temporal, out_stem=out_dir / subject / session / stem,
                         compress=compress, sidecar=sidecar, gzip_level=gzip_level,
                         refuse=None if len(patients) == 1 else (
                             "mixed_patients", "the series holds images of more than one PatientID; "
                             "split it at the source before converting"))
        yield group, stem, task


def _convert_isolated(task: StackTask) -> dict:
    """Convert one stack in its own process, so a crash refuses that series only."""
    try:
        with ProcessPoolExecutor(max_workers=1) as pool:
            return pool.submit(convert_stack, task).result()
    except Exception as exc:
        return {"status": "refused", "code": "internal_error",
                "message": f"the converter process died on this series ({type(exc).__name__}); "
                           "check the files with another reader"}


def convert_tree(in_dir: str | os.PathLike, out_dir: str | os.PathLike, *, deid=None, compress: bool = True,
                 progress: bool = True, workers: int | None = None,
                 gzip_level: int = GZIP_LEVEL) -> ConversionReport:
    """Convert every series below ``in_dir`` into ``out_dir``; see the module docstring.

    Writes ``series_index.parquet``, ``quarantine.parquet`` and ``scan_index.parquet`` (all
    de-identified) into ``out_dir``. ``deid`` defaults to a :class:`Deidentifier` with the key
    from :func:`medcore.dicom.deid.load_or_create_key` (never stored in either tree).
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    if not in_dir.is_dir():
        raise NotADirectoryError(f"{in_dir}: input folder does not exist or is not a folder")
    deid = deid if deid is not None else _default_deid(in_dir, out_dir)
    workers = _default_workers() if workers is None else max(1, int(workers))
    scan = scan_tree(in_dir, workers=workers, progress=progress, exclude=[out_dir])
    quarantine = Quarantine(deid=deid, root=in_dir)
    skipped = scan.skipped
    for file, code, message in zip(skipped["file"].tolist(), skipped["code"].tolist(), skipped["message"].tolist()):
        quarantine.add(scan.files[file], code, message)

    groups = group_frames(scan.index)
    converted: set[str] = set()
    pending: dict[str, tuple[str, str, str]] = {}  # path -> (code, message, series)
    records: list[SeriesRecord] = []
    refused: list[dict] = []
    all_image_files = {str(scan.files[i]) for i in scan.index["file"].unique()} if len(scan.index) else set()

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(groups), desc="convert", unit="series")

    def handle(group: StackGroup, stem: str, task: StackTask, result: dict) -> None:
        for path, code, message in result.get("bad_files", []):
            pending[path] = (code, message, stem)
        if result["status"] == "written":
            converted.update(result["used_files"])
            for path, message in result["dropped_files"].items():
                pending.setdefault(path, ("duplicate_file", message, stem))
            nii = Path(result["nifti"])
            records.append(SeriesRecord(
                series_id=stem, subject=task.sidecar["Subject"], session=task.sidecar["Session"],
                series_uid=task.sidecar["SeriesInstanceUID"], series_number=task.sidecar["SeriesNumber"],
                modality=task.sidecar["Modality"], nifti=nii.relative_to(out_dir).as_posix(),
                sidecar=nii.with_name(stem + ".json").relative_to(out_dir).as_posix(),
                shape=result["shape"], voxel_size=result["voxel_size"], dtype=result["dtype"],
                n_files=len(result["used_files"]), n_frames=result["n_frames"],
                n_volumes=result["n_volumes"], resampled=result["resampled"], issues=result["issues"]))
        else:
            refused.append({"series": stem, "code": result["code"], "message": result["message"],
                            "frames": len(task.frames)})
            for f in task.frames:
                pending.setdefault(str(f.path), (result["code"], f"series {stem}: {result['message']}", stem))
        if bar is not None:
            bar.update(1)

    jobs = list(_tasks(scan, groups, deid, out_dir, compress, gzip_level))
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            futures = [(g, s, t, pool.submit(convert_stack, t)) for g, s, t in jobs]
            for group, stem, task, fut in futures:
                try:
                    result = fut.result()
                except BrokenProcessPool:  # a worker died (e.g. a decoder crash): isolate each series
                    result = _convert_isolated(task)
                except Exception as exc:
                    result = {"status": "refused", "code": "internal_error",
                              "message": f"{type(exc).__name__}: {exc}"}
                handle(group, stem, task, result)
    else:
        for group, stem, task in jobs:
            handle(group, stem, task, convert_stack(task))
    if bar is not None:
        bar.close()

    for path in sorted(all_image_files - converted):
        code, message, stem = pending.get(path, ("internal_error", "the file was not assigned to any series", ""))
        quarantine.add(Path(path), code, message, stem)

    qframe = quarantine.to_frame()
    series_df = pd.DataFrame([asdict(r) for r in records],
                             columns=[f for f in SeriesRecord.__dataclass_fields__])
    out_dir.mkdir(parents=True, exist_ok=True)
    for frame, name in ((series_df, SERIES_INDEX), (qframe, QUARANTINE_TABLE),
                        (deidentified_index(scan, deid), SCAN_INDEX)):
        with atomic_path(out_dir / name) as tmp:
            frame.to_parquet(tmp, index=False)
    report = ConversionReport(out_dir=out_dir, series=records, quarantine=qframe, files_in=scan.n_files,
                              files_converted=len(converted), files_quarantined=len(qframe),
                              refused=refused, local_paths=dict(quarantine.local_paths))
    if not report.balanced:  # a bug, never silently accepted
        raise AssertionError(f"file accounting does not balance: {report.summary()}")
    return report


# ---------------------------------------------------------------------------------------------
# in memory


def load_series(source: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read one DICOM series (a folder or a list of files) into ``(array, affine, meta)``.

    ``array`` is in NIfTI axis order ``(X=col, Y=row, Z=slice[, T])`` with real values
    (rescale applied; colour data get a trailing axis of 3 samples); ``affine`` is the float64
    4x4 voxel-to-RAS map. Raises ``ValueError``
    naming the reason when the input is not exactly one convertible stack.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if root.is_dir():
            scan = scan_tree(root, workers=1)
        else:
            scan = _scan_files([root])
    else:
        scan = _scan_files([Path(p) for p in source])
    if scan.index.empty:
        skipped = scan.skipped
        reasons = "; ".join(f"{scan.files[f].name}: {m}" for f, m in zip(skipped["file"].tolist(),
                                                                          skipped["message"].tolist()))
        raise ValueError(f"{source}: no DICOM image found ({reasons or 'no files'})")
    groups = [g for g in group_frames(scan.index) if not g.localizer] or group_frames(scan.index)
    if len(groups) != 1:
        raise ValueError(f"{source}: holds {len(groups)} distinct stacks (series, orientations, echoes or "
                         "sizes); pass one series folder or use convert_tree")
    group = groups[0]
    frames = tuple(scan.frames[i] for i in group.rows)
    task = StackTask(frames=frames, temporal=tuple(temporal_key(f) for f in frames),
                     out_stem=None, compress=False, sidecar={})
    result = convert_stack(task)
    if result["status"] != "written":
        raise ValueError(f"{source}: {result['code']}: {result['message']}")
    array = result["array"]
    if frames[0].samples_per_pixel > 1:  # colour: (slices, rows, cols, 3) -> (X, Y, Z, 3)
        array = array.transpose(3, 2, 1, 0, 4) if array.ndim == 5 else array.transpose(2, 1, 0, 3)
    else:
        array = array.T
    first = task.frames[0]
    meta = {"modality": first.modality, "series_number": first.series_number,
            "n_volumes": result["n_volumes"], "resampled": result["resampled"],
            "issues": result["issues"], "geometry": result["geometry"], "source_format": "dicom"}
    return array, result["affine"], meta


def _scan_files(paths: list[Path]) -> ScanResult:
    return assemble_scan(paths[0].parent if paths else Path("."), paths, [read_file_and_patient(p) for p in paths])
