"""``medcore convert`` end to end, ``load_series``, NIfTI writing and the sidecar."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from dicom_factory import phantom, write_series

from medcore.cli import main
from medcore.dicom.convert import load_series
from medcore.dicom.nifti import write_nifti


@pytest.fixture()
def key_env(monkeypatch):
    monkeypatch.setenv("MEDCORE_DEID_KEY", "ab" * 32)


def test_cli_converts_and_summarises(tmp_path, key_env, capsys):
    write_series(tmp_path / "in" / "Doe^Jane", 4, rows=8, cols=6, series_number=3)
    (tmp_path / "in" / "junk.txt").write_text("x")
    rc = main(["convert", str(tmp_path / "in"), str(tmp_path / "out"), "--quiet", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "series written: 1," in out and "quarantined not_dicom: 1" in out
    assert "junk.txt" not in out and "Doe" not in out
    (nii,) = (tmp_path / "out").rglob("*.nii.gz")
    assert nii.name.startswith("sub-") and "_ses-" in nii.name
    img = nib.load(nii)
    assert img.shape == (6, 8, 4) and int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    sidecar = json.loads(nii.with_name(nii.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["SeriesNumber"] == 3 and sidecar["Modality"] == "CT" and sidecar["SliceThickness"] == 2.0
    index = pd.read_parquet(tmp_path / "out" / "series_index.parquet")
    assert index.loc[0, "n_files"] == 4


def test_cli_show_paths_and_uncompressed(tmp_path, key_env, capsys):
    write_series(tmp_path / "in", 3, rows=8, cols=6)
    (tmp_path / "in" / "junk.txt").write_text("x")
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "out"), "--quiet", "--no-compress",
                 "--show-paths", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "junk.txt" in out  # only on request, only to the terminal
    assert list((tmp_path / "out").rglob("*.nii")) and not list((tmp_path / "out").rglob("*.nii.gz"))
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    assert "junk" not in q.to_csv()


def test_cli_missing_input_is_a_clear_error(tmp_path, key_env, capsys):
    assert main(["convert", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_load_series_folder_and_file_list(tmp_path):
    paths = write_series(tmp_path / "s", 5, rows=8, cols=6, origin=(1.0, 2.0, 3.0))
    arr, affine, meta = load_series(tmp_path / "s")
    assert arr.shape == (6, 8, 5) and meta["n_volumes"] == 1
    np.testing.assert_array_equal(arr[:, :, 2], (phantom(8, 6, 2).astype(np.int32) - 1024).T)
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [-1.0, -2.0, 3.0, 1.0])
    arr2, affine2, _ = load_series(paths[::-1])
    np.testing.assert_array_equal(arr, arr2)
    np.testing.assert_allclose(affine, affine2)
    with pytest.raises(ValueError, match="no DICOM image"):
        (tmp_path / "t").mkdir()
        (tmp_path / "t" / "a.txt").write_text("x")
        load_series(tmp_path / "t")


def test_write_nifti_refuses_a_sheared_affine(tmp_path):
    shear = np.eye(4)
    shear[0, 2] = 0.5
    with pytest.raises(ValueError, match="sheared"):
        write_nifti(np.zeros((2, 3, 4), np.int16), shear, tmp_path / "x.nii")
    assert not (tmp_path / "x.nii").exists()


def test_quarantine_messages_never_carry_paths(tmp_path):
    from medcore.dicom.deid import Deidentifier
    from medcore.dicom.quarantine import Quarantine, file_id

    root = tmp_path / "Doe^Jane"
    q = Quarantine(deid=Deidentifier(b"q" * 32), root=root)
    bad = root / "MRN123" / "Jane.dcm"
    q.add(bad, "unreadable", f"OSError: cannot open {bad} (in {root}); Jane.dcm is locked")
    (row,) = q.rows
    assert "Jane" not in row["message"] and "MRN123" not in row["message"] and "<file>" in row["message"]
    assert row["file_id"] == file_id(Deidentifier(b"q" * 32), "MRN123/Jane.dcm")
    assert q.local_paths[row["file_id"]] == bad


def test_pool_workers_give_the_same_outputs(tmp_path):
    import hashlib

    from medcore.dicom.convert import convert_tree
    from medcore.dicom.deid import Deidentifier

    for seed in range(3):
        write_series(tmp_path / "in" / f"s{seed}", 3, rows=8, cols=6, seed=seed, series_number=seed + 1)
    digests = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        report = convert_tree(tmp_path / "in", out, deid=Deidentifier(b"w" * 32), progress=False, workers=workers)
        assert len(report.series) == 3 and report.balanced
        digests.append(sorted((p.relative_to(out).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest())
                              for p in out.rglob("*.nii.gz")))
    assert digests[0] == digests[1]


def test_load_series_colour_matches_ground_truth(shared_data):
    folder = shared_data / "dicom" / "dicom2nifti" / "generic" / "rgb"
    arr, affine, meta = load_series(folder / "001")
    truth = nib.load(str(folder / "001_ground_truth.nii.gz"))
    ref = np.asanyarray(truth.dataobj)
    assert arr.shape == ref.shape + (3,) and arr.dtype == np.uint8
    for c, name in enumerate("RGB"):
        np.testing.assert_array_equal(arr[..., c], ref[name])
    np.testing.assert_allclose(affine, truth.affine, atol=1e-3)


def test_output_inside_input_is_not_rescanned(tmp_path):
    from medcore.dicom.convert import convert_tree
    from medcore.dicom.deid import Deidentifier

    write_series(tmp_path / "in", 3, rows=8, cols=6)
    for _ in range(2):
        report = convert_tree(tmp_path / "in", tmp_path / "in" / "out", deid=Deidentifier(b"o" * 32),
                              progress=False, workers=1)
        assert report.files_in == 3 and len(report.series) == 1 and report.files_quarantined == 0


def test_public_api_resolves():
    import medcore.dicom as dicom

    for name in dicom.__all__:
        assert getattr(dicom, name) is not None
    with pytest.raises(AttributeError):
        dicom.no_such_name  # noqa: B018


_REAL_CONVERT_STACK = None  # the real convert_stack, set by the test below (workers are forked)


def _crash_on_series_2(task):
    """Stands in for convert_stack in worker processes: dies like a segfaulting decoder on series 2."""
    import os

    if task.sidecar.get("SeriesNumber") == 2:
        os._exit(3)
    return _REAL_CONVERT_STACK(task)


def test_a_crashing_worker_refuses_only_its_series(tmp_path, monkeypatch):
    global _REAL_CONVERT_STACK
    from medcore.dicom import convert
    from medcore.dicom.deid import Deidentifier

    for seed in range(3):
        write_series(tmp_path / "in" / f"s{seed}", 3, rows=8, cols=6, seed=seed, series_number=seed + 1)
    _REAL_CONVERT_STACK = convert.convert_stack
    monkeypatch.setattr(convert, "convert_stack", _crash_on_series_2)
    report = convert.convert_tree(tmp_path / "in", tmp_path / "out", deid=Deidentifier(b"c" * 32),
                                  progress=False, workers=2)
    assert sorted(r.series_number for r in report.series) == [1, 3]
    assert set(report.quarantine["code"]) == {"internal_error"} and len(report.quarantine) == 3
    assert report.balanced
