"""A generated bad-input corpus: each case gets the right outcome and the file accounting balances."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from dicom_factory import PHI_ID, image_dataset, phantom, rtstruct_dataset, save, sr_dataset, write_series
from pydicom.uid import generate_uid

from medcore.dicom.convert import convert_tree
from medcore.dicom.deid import Deidentifier

PHI_FOLDER = "Doe^Jane_MRN123456"
PHI_STRINGS = ("Doe", "Jane", PHI_ID, "19700101")
ROWS, COLS = 12, 10


def _build(root: Path) -> dict[str, list[Path]]:
    """Write every case below ``root``; returns case name -> files."""
    cases: dict[str, list[Path]] = {}
    study = generate_uid()
    phi = root / PHI_FOLDER
    cases["main"] = write_series(phi / "main", 6, name="Jane_Doe_", series_number=1, study_uid=study)
    cases["no_preamble"] = write_series(root / "raw", 3, series_number=2, study_uid=study, preamble=False)
    # all InstanceNumber equal
    uid = generate_uid()
    paths = []
    for k in range(5):
        ds = image_dataset(study_uid=study, series_uid=uid, ipp=(0, 0, 3.0 * k), pixels=phantom(ROWS, COLS, k),
                           series_number=3, instance_number=1)
        paths.append(save(ds, root / "same_instance" / f"z{4 - k}.dcm"))
    cases["same_instance"] = paths
    # one slice with different Rows (the last position)
    uid = generate_uid()
    paths = []
    for k in range(5):
        rows = ROWS + 2 if k == 4 else ROWS
        ds = image_dataset(study_uid=study, series_uid=uid, ipp=(0, 0, 2.0 * k), pixels=phantom(rows, COLS, k),
                           series_number=4, instance_number=k + 1)
        paths.append(save(ds, root / "odd_rows" / f"{k}.dcm"))
    cases["odd_rows"] = paths
    # localizers mixed into the main stack
    uid = generate_uid()
    loc = write_series(root / "loc", 5, series_number=5, study_uid=study, series_uid=uid, name="ax")
    for j, iop in enumerate([(0, 1, 0, 0, 0, -1), (1, 0, 0, 0, 0, -1)]):
        ds = image_dataset(study_uid=study, series_uid=uid, ipp=(0, 0, 0), iop=iop, pixels=phantom(ROWS, COLS, 9),
                           series_number=5, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"), instance_number=90 + j)
        loc.append(save(ds, root / "loc" / f"scout{j}.dcm"))
    cases["localizers"] = loc
    # a duplicate file: exact copy of one main slice
    dup = root / "dupes" / "copy_of_slice.dcm"
    dup.parent.mkdir(parents=True)
    shutil.copy(cases["main"][2], dup)
    cases["duplicate"] = [dup]
    # a "duplicate" that is not exact: same SOPInstanceUID, different pixels -> refused, never guessed
    uid = generate_uid()
    conflict = write_series(root / "conflict", 3, series_number=14, study_uid=study, series_uid=uid)
    ds = pydicom.dcmread(conflict[0])
    ds.PixelData = (ds.pixel_array + 1).astype(ds.pixel_array.dtype).tobytes()
    conflict.append(save(ds, root / "conflict" / "reexport.dcm"))
    cases["conflict"] = conflict
    # two series sharing a SeriesNumber
    cases["shared_a"] = write_series(root / "shared_a", 3, series_number=7, study_uid=study, seed=1)
    cases["shared_b"] = write_series(root / "shared_b", 3, series_number=7, study_uid=study, seed=2)
    # two echoes in one series
    uid = generate_uid()
    echo = []
    for e, te in ((1, 10.0), (2, 30.0)):
        echo += write_series(root / "echo", 4, series_number=8, study_uid=study, series_uid=uid, name=f"e{e}_",
                             modality="MR", echo_number=e, echo_time=te, seed=e)
    cases["echoes"] = echo
    # per-slice RescaleSlope
    uid = generate_uid()
    paths = []
    for k, slope in enumerate([1.0, 1.5, 2.0, 0.5]):
        ds = image_dataset(study_uid=study, series_uid=uid, ipp=(0, 0, 2.0 * k), pixels=phantom(ROWS, COLS, k),
                           series_number=9, slope=slope, intercept=-100.0, instance_number=k + 1)
        paths.append(save(ds, root / "slopes" / f"{k}.dcm"))
    cases["slopes"] = paths
    # gantry tilt of 20 degrees, table steps of 3 mm along z
    a = np.radians(20.0)
    tilt_iop = (1, 0, 0, 0, np.cos(a), -np.sin(a))
    uid = generate_uid()
    paths = []
    for k in range(5):
        ds = image_dataset(study_uid=study, series_uid=uid, ipp=(0, 0, 3.0 * k), iop=tilt_iop,
                           pixels=phantom(ROWS, COLS, k), series_number=10, tilt=20.0, instance_number=k + 1)
        paths.append(save(ds, root / "tilt" / f"{k}.dcm"))
    cases["tilt"] = paths
    # a missing slice (positions 0, 2, 4, 8)
    uid = generate_uid()
    paths = []
    for k, z in enumerate([0.0, 2.0, 4.0, 8.0]):
        ds = image_dataset(study_uid=study, series_uid=uid, ipp=(0, 0, z), pixels=phantom(ROWS, COLS, k),
                           series_number=11, instance_number=k + 1)
        paths.append(save(ds, root / "gap" / f"{k}.dcm"))
    cases["missing_slice"] = paths
    # truncated file (a one-file series cut inside its pixel data)
    ds = image_dataset(study_uid=study, series_uid=generate_uid(), ipp=(0, 0, 0), pixels=phantom(64, 64, 0),
                       series_number=12)
    trunc = save(ds, root / "broken" / "truncated.dcm")
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size - 4000])
    cases["truncated"] = [trunc]
    # no PixelData
    ds = image_dataset(study_uid=study, series_uid=generate_uid(), ipp=(0, 0, 0), pixels=phantom(ROWS, COLS, 0),
                       series_number=13)
    del ds.PixelData
    cases["no_pixels"] = [save(ds, root / "broken" / "no_pixels.dcm")]
    cases["sr"] = [save(sr_dataset(study), root / "objects" / "report.dcm")]
    cases["rtstruct"] = [save(rtstruct_dataset(study), root / "objects" / "structures.dcm")]
    empty = root / "broken" / "empty.dcm"
    empty.write_bytes(b"")
    cases["empty"] = [empty]
    text = phi / "notes_Jane_Doe.txt"
    text.write_text("not an image\n")
    cases["not_dicom"] = [text]
    return cases


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    cases = _build(root / "in")
    report = convert_tree(root / "in", root / "out", deid=Deidentifier(b"k" * 32), progress=False, workers=1)
    return cases, report, root / "out"


def _outputs(report, series_number: int):
    return [r for r in report.series if r.series_number == series_number]


def _codes(report, files: list[Path]) -> list[str]:
    inverse = {str(p): fid for fid, p in report.local_paths.items()}
    q = report.quarantine.set_index("file_id")
    return [q.loc[inverse[str(p)], "code"] if str(p) in inverse else "converted" for p in files]


def _load(out: Path, record):
    img = nib.load(out / record.nifti)
    return np.asanyarray(img.dataobj), img.affine, json.loads((out / record.sidecar).read_text())


def test_accounting_balances(converted):
    cases, report, out = converted
    n_files = sum(len(v) for v in cases.values())
    assert report.files_in == n_files
    assert report.files_in == report.files_converted + report.files_quarantined
    q = pd.read_parquet(out / "quarantine.parquet")
    assert len(q) == report.files_quarantined and list(q.columns) == ["file_id", "code", "message", "series"]
    assert q["file_id"].is_unique and (q["message"].str.len() > 10).all()
    index = pd.read_parquet(out / "series_index.parquet")
    assert len(index) == len(report.series)


def test_main_series_sorted_by_position_with_correct_affine(converted):
    cases, report, out = converted
    (rec,) = _outputs(report, 1)
    data, affine, sidecar = _load(out, rec)
    assert data.shape == (COLS, ROWS, 6)
    for k in range(6):  # phantom(k) was written at z = 30 + 2k
        np.testing.assert_array_equal(data[:, :, k], (phantom(ROWS, COLS, k).astype(np.int32) - 1024).T)
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [10.0, 20.0, 30.0, 1])
    np.testing.assert_allclose(affine[:3, :3], np.diag([-0.7, -0.8, 2.0]), atol=1e-6)
    assert sidecar["GeometryResampled"] is False and sidecar["Modality"] == "CT"
    assert _codes(report, cases["duplicate"]) == ["duplicate_file"]
    assert set(_codes(report, cases["main"])) == {"converted"}


def test_no_preamble_and_equal_instance_numbers(converted):
    cases, report, out = converted
    (rec,) = _outputs(report, 2)
    assert rec.shape == [COLS, ROWS, 3]
    (rec,) = _outputs(report, 3)
    data, _, _ = _load(out, rec)
    for k in range(5):
        np.testing.assert_array_equal(data[:, :, k], (phantom(ROWS, COLS, k).astype(np.int32) - 1024).T)


def test_odd_rows_split_from_the_main_stack(converted):
    cases, report, out = converted
    recs = _outputs(report, 4)
    shapes = sorted(tuple(r.shape) for r in recs)
    assert (COLS, ROWS, 4) in shapes
    assert all(s[1] != ROWS or s[2] == 4 for s in shapes)
    assert set(_codes(report, cases["odd_rows"])) <= {"converted", "missing_geometry"}


def test_localizers_do_not_enter_the_main_stack(converted):
    cases, report, out = converted
    recs = _outputs(report, 5)
    main = [r for r in recs if "localizer" not in r.series_id]
    assert len(main) == 1 and main[0].shape == [COLS, ROWS, 5] and not main[0].resampled
    assert len(recs) == 3  # two single-slice localizer volumes, each correctly placed


def test_shared_series_number_gives_two_outputs(converted):
    cases, report, out = converted
    recs = _outputs(report, 7)
    assert len(recs) == 2 and recs[0].nifti != recs[1].nifti


def test_two_echoes_split(converted):
    cases, report, out = converted
    recs = sorted(_outputs(report, 8), key=lambda r: r.series_id)
    assert [r.series_id.rsplit("_", 1)[1] for r in recs] == ["echo-1", "echo-2"]
    for e, rec in enumerate(recs, start=1):
        data, _, sidecar = _load(out, rec)
        assert data.shape == (COLS, ROWS, 4) and sidecar["EchoTime"] == pytest.approx(0.01 if e == 1 else 0.03)
        np.testing.assert_array_equal(data[:, :, 1], phantom(ROWS, COLS, 1, seed=e).T)


def test_per_slice_rescale_slope_gives_float_real_values(converted):
    cases, report, out = converted
    (rec,) = _outputs(report, 9)
    data, _, _ = _load(out, rec)
    assert data.dtype == np.float32
    for k, slope in enumerate([1.0, 1.5, 2.0, 0.5]):
        np.testing.assert_allclose(data[:, :, k], phantom(ROWS, COLS, k).T * slope - 100.0, rtol=1e-6)


def test_gantry_tilt_resampled_and_recorded(converted):
    cases, report, out = converted
    (rec,) = _outputs(report, 10)
    data, affine, sidecar = _load(out, rec)
    assert rec.resampled and sidecar["GeometryResampled"] is True
    assert "gantry_tilt" in sidecar["GeometryResampling"]["reasons"]
    assert sidecar["GeometryResampling"]["gantry_tilt_deg"] == pytest.approx(20.0, abs=0.01)
    cols = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(cols.T @ cols, np.eye(3), atol=1e-6)  # orthogonal: no shear
    assert affine[2, 2] / np.linalg.norm(affine[:3, 2]) == pytest.approx(np.cos(np.radians(20.0)), abs=1e-6)
    np.testing.assert_array_equal(data[:, :, 0], (phantom(ROWS, COLS, 0).astype(np.int32) - 1024).T)


def test_refusals_have_reasons(converted):
    cases, report, out = converted
    assert _codes(report, cases["missing_slice"]) == ["missing_slices"] * 4
    assert not _outputs(report, 11)
    assert _codes(report, cases["conflict"]) == ["conflicting_duplicates"] * 4
    assert _codes(report, cases["empty"]) == ["empty_file"]
    assert _codes(report, cases["not_dicom"]) == ["not_dicom"]
    assert _codes(report, cases["sr"] + cases["rtstruct"]) == ["unsupported_sop_class"] * 2
    assert _codes(report, cases["no_pixels"]) == ["no_pixel_data"]
    assert _codes(report, cases["truncated"])[0] in {"truncated", "decode_failed"}
    msg = report.quarantine.loc[report.quarantine["code"] == "missing_slices", "message"].iloc[0]
    assert "gap" in msg and "mm" in msg


def test_no_phi_in_outputs(converted):
    cases, report, out = converted
    for path in out.rglob("*"):
        rel = str(path.relative_to(out))
        assert not any(s in rel for s in PHI_STRINGS), rel
        if path.is_file():
            data = path.read_bytes()
            if path.name.endswith(".gz"):
                import gzip

                data = gzip.decompress(data)
            for s in PHI_STRINGS:
                assert s.encode() not in data, (rel, s)
    for s in PHI_STRINGS:
        assert s not in report.summary()
