"""Acceptance on real data: same image in world space as the reference conversions, and never a
wrong affine on the hard cases (gantry tilt, irregular spacing, missing slices, mixed orientations).

Comparison is in world space: the reference's voxel grid is mapped through both affines onto
ours (dcm2niix flips and orders axes its own way); the map must be a signed axis permutation
whose voxel centres agree within 0.01 mm, and the voxel values must then be identical (integers)
or within 1e-4 relative (scaled data).
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medcore.dicom.convert import convert_tree
from medcore.dicom.deid import Deidentifier

DCM_QA = ["dcm_qa", "dcm_qa_12bit", "dcm_qa_enh", "dcm_qa_nih", "dcm_qa_philips", "dcm_qa_ts", "dcm_qa_uih"]
WORLD_TOL_MM = 0.01
#: References the converter refuses today (absent with a reason, never wrong), printed every run.
#: (Empty: every reference converts today. An entry names the Ref file and why it is refused.)
KNOWN_REFUSED: dict[str, str] = {}
#: Series dcm2niix merges into a fake time series that medcore refuses on purpose (issue 13): the
#: copies repeat one position with no acquisition value that tells them apart, and differ in pixels.
DCM2NIIX_MERGES_COPIES = {
    "1_1_T1W_SE_1024a.nii": "MR2_J2KI (lossy JPEG 2000) and MR2_J2KR/MR2_UNCI are one image encoded twice; "
                            "dcm2niix stacks them as 2 volumes, medcore refuses them as indistinct_repeats",
}
KEY = Deidentifier(b"r" * 32)


def _convert(folder: Path, out: Path):
    return convert_tree(folder, out, deid=KEY, compress=False, progress=False, workers=1)


def _grid_map(ref_aff, ref_shape, our_aff, our_shape):
    """Signed permutation ``(perm, flips)`` taking our array to the reference grid, or a reason."""
    m = np.linalg.inv(our_aff) @ ref_aff
    p = np.round(m[:3, :3])
    if not (np.all(np.abs(p).sum(0) == 1) and np.all(np.abs(p).sum(1) == 1)):
        return f"axes not a permutation:\n{np.round(m[:3, :3], 3)}"
    t = np.round(m[:3, 3])
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in ref_shape[:3]])), dtype=float)
    ref_w = corners @ ref_aff[:3, :3].T + ref_aff[:3, 3]
    our_idx = corners @ p.T + t
    our_w = our_idx @ our_aff[:3, :3].T + our_aff[:3, 3]
    err = float(np.max(np.linalg.norm(ref_w - our_w, axis=1)))
    if err > WORLD_TOL_MM:
        return f"voxel centres differ by {err:.4f} mm"
    if np.any(our_idx < -1e-6) or np.any(our_idx > np.asarray(our_shape[:3]) - 1 + 1e-6):
        return f"reference grid {ref_shape} falls outside ours {our_shape}"
    perm = [int(np.argmax(np.abs(p[:, i]))) for i in range(3)]
    flips = [p[perm[i], i] < 0 for i in range(3)]
    if [our_shape[j] for j in perm] != list(ref_shape[:3]):
        return f"shape {our_shape} does not match reference {ref_shape}"
    return perm, flips


def _values(img) -> np.ndarray:
    arr = np.asanyarray(img.dataobj)
    return arr


def compare(ref_path: Path, ours: Path) -> str | None:
    """None when ``ours`` equals the reference in world space, else the reason."""
    ref, our = nib.load(str(ref_path)), nib.load(str(ours))
    rs, os_ = ref.shape, our.shape
    if len(rs) != len(os_) or rs[3:] != os_[3:]:
        return f"dimensions {os_} vs reference {rs}"
    mapped = _grid_map(ref.affine, rs, our.affine, os_)
    if isinstance(mapped, str):
        return mapped
    perm, flips = mapped
    a = _values(our)
    a = np.transpose(a, perm + list(range(3, a.ndim)))
    for i, f in enumerate(flips):
        if f:
            a = np.flip(a, axis=i)
    b = _values(ref)
    if a.dtype.fields is not None or b.dtype.fields is not None:  # RGB (the reference may be RGBA)
        if a.dtype.fields is None or b.dtype.fields is None:
            return f"colour {a.dtype} vs {b.dtype}"
        bad = sum(int(np.count_nonzero(a[c] != b[c])) for c in "RGB")
        return None if bad == 0 else f"{bad} RGB samples differ"
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        bad = int(np.count_nonzero(a64 != b64))
        return None if bad == 0 else f"{bad} voxels differ"
    scale = max(1.0, float(np.max(np.abs(b64))))
    diff = float(np.max(np.abs(a64 - b64))) if a64.size else 0.0
    return None if diff <= 1e-4 * scale else f"max difference {diff:.4g} (scale {scale:.4g})"


def _refs_by_series(ref_dir: Path) -> list[tuple[Path, int, int | None]]:
    out = []
    for nii in sorted(ref_dir.glob("*.nii")):
        meta = json.loads(nii.with_suffix(".json").read_text())
        out.append((nii, int(meta["SeriesNumber"]), meta.get("EchoNumber")))
    return out


def _match(ref: Path, candidates: list[Path]) -> tuple[bool, list[str]]:
    reasons = []
    for c in candidates:
        why = compare(ref, c)
        if why is None:
            return True, []
        reasons.append(f"{c.name}: {why}")
    return False, reasons


def test_dcm_qa_references(shared_data, tmp_path):
    compared, failures, refused = 0, [], []
    for name in DCM_QA:
        root = shared_data / "dicom" / name
        report = _convert(root / "In", tmp_path / name)
        assert report.balanced
        for ref, number, _echo in _refs_by_series(root / "Ref"):
            cands = [tmp_path / name / r.nifti for r in report.series if r.series_number == number]
            label = f"{name}/{ref.name}"
            if not cands and label in KNOWN_REFUSED:
                codes = set(report.quarantine.loc[report.quarantine["series"].str.contains(f"_ser-{number:03d}-"),
                                                  "code"])
                assert codes, f"{label}: neither written nor quarantined"
                refused.append(f"{label}: refused ({sorted(codes)}): {KNOWN_REFUSED[label]}")
                continue
            ok, reasons = _match(ref, cands)
            compared += 1
            if not ok:
                failures.append(f"{label}: " + ("; ".join(reasons) or "no output for this series"))
            if ref.with_suffix(".bval").exists() and ok:
                ours = [c.with_suffix(".bval") for c in cands if c.with_suffix(".bval").exists()]
                expected = np.loadtxt(ref.with_suffix(".bval"))
                if not any(np.allclose(np.loadtxt(b), expected, rtol=1e-4) for b in ours):
                    failures.append(f"{label}: .bval missing or different")
    print(f"\ncompared {compared} dcm_qa reference series, {len(failures)} failed, "
          f"{len(refused)} NOT compared (refused with a reason):")
    for line in refused:
        print("  " + line)
    assert compared >= 30
    assert not failures, "\n".join(failures)


def test_dicom2nifti_ground_truths(shared_data, tmp_path):
    base = shared_data / "dicom" / "dicom2nifti"
    compared, failures = 0, []
    for truth in sorted(base.rglob("*_ground_truth.nii.gz")):
        if "failing" in truth.parts:
            continue  # checked geometrically below: those inputs must never give a wrong affine
        folder = truth.parent / truth.name.replace("_ground_truth.nii.gz", "")
        out = tmp_path / f"{truth.parent.name}_{folder.name}"
        report = _convert(folder, out)
        ok, reasons = _match(truth, [out / r.nifti for r in report.series])
        compared += 1
        if not ok:
            failures.append(f"{truth.relative_to(base)}: " + ("; ".join(reasons) or "no output"))
    print(f"\ncompared {compared} dicom2nifti ground truths, {len(failures)} failed")
    assert compared >= 9
    assert not failures, "\n".join(failures)


def test_dcm_qa_ct_philips_matches_dcm2niix_run_here(shared_data, tmp_path):
    """dcm_qa_ct ships JSON only: run the dcm2niix binary in the test as the reference."""
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(exe).exists():
        pytest.fail("dcm2niix binary not found (pip package dcm2niix, installed with the dev extra)")
    src = shared_data / "dicom" / "dcm_qa_ct" / "In" / "Philips"
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    subprocess.run([exe, "-z", "n", "-f", "%s_%e", "-o", str(ref_dir), str(src)], check=True,
                   capture_output=True, timeout=120)
    report = _convert(src, tmp_path / "ours")
    refs = sorted(ref_dir.glob("*.nii"))
    assert refs
    compared = 0
    for ref in refs:
        number = int(ref.name.split("_")[0])
        ok, reasons = _match(ref, [tmp_path / "ours" / r.nifti for r in report.series if r.series_number == number])
        assert ok, f"{ref.name}: {reasons}"
        compared += 1
    print(f"\ncompared {compared} dcm_qa_ct Philips series against dcm2niix run here")


def test_pydicom_data_matches_dcm2niix_run_here(shared_data, tmp_path):
    """No Ref ships with pydicom_data: every image series dcm2niix writes must equal ours in world
    space, or ours must be absent with a reason (no geometry, SEG, ...), never different."""
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    src = shared_data / "dicom" / "pydicom_data" / "files"
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    subprocess.run([exe, "-z", "n", "-ba", "n", "-f", "%s_%e_%p", "-o", str(ref_dir), str(src)],
                   capture_output=True, timeout=120)
    report = _convert(src, tmp_path / "ours")
    assert report.balanced
    series_of = {}
    for p in src.iterdir():
        try:
            series_of[str(p)] = str(pydicom.dcmread(p, stop_before_pixels=True, force=True).SeriesInstanceUID)
        except Exception:
            continue
    quarantined = {
        str(report.local_paths[f]): c for f, c in zip(report.quarantine["file_id"], report.quarantine["code"])
    }
    compared, absent = 0, []
    for ref in sorted(ref_dir.glob("*.nii")):
        if "_ROI" in ref.name:
            continue  # dcm2niix's overlay planes, not images
        meta = json.loads(ref.with_suffix(".json").read_text())
        uid = KEY.uid(meta["SeriesInstanceUID"])
        cands = [tmp_path / "ours" / r.nifti for r in report.series if r.series_uid == uid]
        if not cands:
            files = [p for p, u in series_of.items() if u == meta["SeriesInstanceUID"]]
            assert files and all(p in quarantined for p in files), f"{ref.name}: no output and no reason"
            absent.append(f"{ref.name}: {sorted({quarantined[p] for p in files})}")
            continue
        if ref.name in DCM2NIIX_MERGES_COPIES:
            files = [p for p, u in series_of.items() if u == meta["SeriesInstanceUID"]]
            assert "indistinct_repeats" in {quarantined.get(p) for p in files}, ref.name
            absent.append(f"{ref.name}: {DCM2NIIX_MERGES_COPIES[ref.name]}")
            continue
        ok, reasons = _match(ref, cands)
        assert ok, f"{ref.name}: {reasons}"
        compared += 1
    print(f"\npydicom_data: compared {compared} series with dcm2niix run here; refused with a reason "
          f"where dcm2niix wrote a volume: {absent}")
    assert compared >= 4


def _header_geometry(path: Path):
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return (np.array(ds.ImageOrientationPatient, float), np.array(ds.ImagePositionPatient, float),
            np.array(ds.PixelSpacing, float), int(ds.Rows), int(ds.Columns))


def _real_values(path: Path) -> np.ndarray:
    ds = pydicom.dcmread(path, force=True)
    return ds.pixel_array * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)


def _check_geometry(out: Path, record, sources: list[Path]) -> None:
    """Independent check from the DICOM headers: orthogonal axes along IOP, origin at the
    lowest slice, and (when not resampled) every source slice at a whole voxel plane."""
    img = nib.load(str(out / record.nifti))
    aff = img.affine
    lps = np.diag([-1, -1, 1, 1]) @ aff
    geo = [_header_geometry(p) for p in sources]
    iop, _, ps, rows, cols = geo[0]
    u, v = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    n = np.cross(u, v)
    np.testing.assert_allclose(lps[:3, 0], u * ps[1], atol=1e-4)
    np.testing.assert_allclose(lps[:3, 1], v * ps[0], atol=1e-4)
    assert abs(float(lps[:3, 2] @ n) - np.linalg.norm(lps[:3, 2])) < 1e-4, "slice axis not along the normal"
    assert img.shape[:2] == (cols, rows)
    data = np.asanyarray(img.dataobj)
    data = data if data.ndim == 4 else data[..., None]
    if record.resampled:
        ipps = np.array([g[1] for g in geo])
        lowest = int(np.argmin(ipps @ n))
        np.testing.assert_allclose(lps[:3, 3], ipps[lowest], atol=WORLD_TOL_MM)
        extent = (ipps @ n).max() - (ipps @ n).min()
        assert (img.shape[2] - 1) * np.linalg.norm(lps[:3, 2]) <= extent + 1e-3
        # the first output plane is the lowest input slice itself (no shift, no interpolation)
        np.testing.assert_allclose(data[:, :, 0, 0], _real_values(sources[lowest]).T, atol=0.5)
        return
    inv = np.linalg.inv(lps)
    for path, (_, ipp, _, _, _) in zip(sources, geo):
        idx = inv @ np.append(ipp, 1.0)
        assert np.allclose(idx[:3], np.round(idx[:3]), atol=WORLD_TOL_MM / np.linalg.norm(lps[:3, 2])), idx
        assert abs(idx[0]) < 1e-3 and abs(idx[1]) < 1e-3
        plane = data[:, :, int(round(idx[2]))]
        expected = _real_values(path).T
        assert any(np.allclose(plane[..., t], expected, atol=1e-3) for t in range(plane.shape[-1])), path.name


@pytest.mark.parametrize("case", ["dcm_qa_ct/In/GE", "dicom2nifti/failing", "monai_ct"])
def test_hard_cases_never_give_a_wrong_affine(shared_data, tmp_path, case):
    src = shared_data / "dicom" / case
    report = _convert(src, tmp_path / "out")
    assert report.balanced
    files_by_series: dict[str, list[Path]] = {}
    written = {r.series_id for r in report.series}
    for rec in report.series:
        # the files behind a record: all image files of that SeriesNumber whose header has its orientation
        sources = []
        for p in sorted(src.rglob("*")):
            if not p.is_file() or p.suffix == ".gz":
                continue
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True, force=True)
            except Exception:
                continue
            if getattr(ds, "SeriesNumber", None) == rec.series_number and "ImagePositionPatient" in ds:
                sources.append(p)
        files_by_series[rec.series_id] = sources
        iops = {tuple(np.round(_header_geometry(p)[0], 3)) for p in sources}
        if len(iops) > 1:  # several stacks share the number: keep the files matching this output
            img = nib.load(str(tmp_path / "out" / rec.nifti))
            u = (np.diag([-1, -1, 1, 1]) @ img.affine)[:3, 0]
            sources = [p for p in sources if np.allclose(_header_geometry(p)[0][:3] * _header_geometry(p)[2][1],
                                                         u, atol=1e-3)]
            positions = {tuple(np.round(_header_geometry(p)[1], 2)) for p in sources}
            sources = [p for p in sources if tuple(np.round(_header_geometry(p)[1], 2)) in positions]
        _check_geometry(tmp_path / "out", rec, sources)
    refused = report.quarantine[report.quarantine["code"] != "duplicate_file"]
    assert all(len(m) > 10 for m in refused["message"])
    print(f"\n{case}: {len(written)} volumes written (geometry checked), "
          f"{len(refused)} files refused: {sorted(set(refused['code']))}")
    if case == "monai_ct":
        assert set(report.quarantine["code"]) == {"missing_slices"}
    if case == "dcm_qa_ct/In/GE":
        (rec,) = report.series
        assert rec.resampled and {"gantry_tilt", "irregular_spacing"} <= set(rec.issues)


TIMING_FIELDS = ("RepetitionTime", "EchoTime", "SliceTiming", "PhaseEncodingDirection", "TotalReadoutTime")
TIMING_TOL_S = 1e-3


def _pe_world(direction: str, affine: np.ndarray) -> np.ndarray:
    column = affine[:3, "ijk".index(direction[0])]
    return (-1.0 if direction.endswith("-") else 1.0) * column / np.linalg.norm(column)


def _timing_result(field: str, ref_value, ours: dict, ref_img, our_img) -> tuple[bool, str]:
    """(agrees or absent with a reason, what was found)."""
    if field not in ours:
        why = ours.get("BidsFieldsNotWritten", {}).get(field)
        return why is not None, f"absent: {why}" if why else "absent without a reason"
    value = ours[field]
    if field == "PhaseEncodingDirection":
        ok = float(_pe_world(value, our_img.affine) @ _pe_world(ref_value, ref_img.affine)) > 0.99
        return ok, f"{value} (ref {ref_value}, same world direction: {ok})"
    if field == "SliceTiming":
        perm, flips = _grid_map(ref_img.affine, ref_img.shape, our_img.affine, our_img.shape)
        if perm[2] != 2 or len(value) != len(ref_value):
            return False, f"slice axes differ ({perm}) or counts ({len(value)} vs {len(ref_value)})"
        mapped = value[::-1] if flips[2] else value
        err = float(np.max(np.abs(np.asarray(mapped) - np.asarray(ref_value))))
        return err <= TIMING_TOL_S, f"{len(value)} slices, max error {err * 1000:.3f} ms"
    err = abs(float(value) - float(ref_value))
    return err <= TIMING_TOL_S, f"{value} (ref {ref_value}, error {err * 1000:.3f} ms)"


def test_bids_timing_fields_match_refs(shared_data, tmp_path):
    """Every timing field of every Ref JSON with an image: ours within 1 ms, or absent with a stated reason."""
    lines, failures = [], []
    counts = {f: {"agree": 0, "absent": 0} for f in TIMING_FIELDS}
    for name in DCM_QA:
        root = shared_data / "dicom" / name
        report = _convert(root / "In", tmp_path / name)
        for ref, number, _echo in _refs_by_series(root / "Ref"):
            meta = json.loads(ref.with_suffix(".json").read_text())
            cands = [tmp_path / name / r.nifti for r in report.series if r.series_number == number]
            ours_nii = next((c for c in cands if compare(ref, c) is None), None)
            if ours_nii is None:
                failures.append(f"{name}/{ref.name}: no matching output")
                continue
            ours = json.loads(ours_nii.with_suffix(".json").read_text())
            ref_img, our_img = nib.load(str(ref)), nib.load(str(ours_nii))
            for field in TIMING_FIELDS:
                if field not in meta:
                    continue
                ok, found = _timing_result(field, meta[field], ours, ref_img, our_img)
                counts[field]["absent" if field not in ours else "agree"] += ok
                lines.append(f"{name}/{ref.name} {field}: {'ok' if ok else 'FAIL'} {found}")
                if not ok:
                    failures.append(lines[-1])
    print("\n" + "\n".join(lines) + f"\ncounts: {counts}")
    assert not failures, "\n".join(failures)
    assert counts["SliceTiming"]["agree"] >= 25 and counts["PhaseEncodingDirection"]["agree"] >= 25
    assert counts["TotalReadoutTime"]["agree"] >= 25 and counts["RepetitionTime"]["agree"] >= 35
