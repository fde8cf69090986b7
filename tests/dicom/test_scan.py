"""Header scan of a tree: every file listed once, non-DICOM skipped with a reason, no PHI saved."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from dicom_factory import PHI_ID, write_series

from medcore.dicom.deid import Deidentifier
from medcore.dicom.scan import deidentified_index, list_files, scan_tree


def _tree(root: Path) -> None:
    write_series(root / "Doe^Jane" / "a", 4)
    write_series(root / "b", 3, preamble=False)
    (root / "b" / "readme.txt").write_text("hello")
    (root / "empty.dcm").write_bytes(b"")


def test_scan_lists_frames_and_skips_with_reasons(tmp_path):
    _tree(tmp_path)
    scan = scan_tree(tmp_path, workers=1)
    assert scan.n_files == 9 == len(list_files(tmp_path))
    assert len(scan.index) == 7 and len(scan.frames) == 7
    assert scan.index["series_uid"].nunique() == 2
    reasons = dict(zip([scan.files[i].name for i in scan.skipped["file"]], scan.skipped["code"]))
    assert reasons == {"readme.txt": "not_dicom", "empty.dcm": "empty_file"}
    assert {scan.patient_id_of(int(f)) for f in scan.index["file"]} == {PHI_ID}
    assert "patient_id" not in scan.index  # raw identifiers stay in memory, never indexed


def test_scan_reads_each_file_once(tmp_path, monkeypatch):
    _tree(tmp_path)
    import medcore.dicom.reader as reader_mod
    import medcore.dicom.scan as scan_mod

    opened: list[str] = []

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return open(path, *args, **kwargs)

    def no_second_read(path):
        raise AssertionError(f"{path} read again for its PatientID")

    monkeypatch.setattr(reader_mod, "open", counting_open, raising=False)
    monkeypatch.setattr(scan_mod, "read_patient_id", no_second_read)
    scan = scan_tree(tmp_path, workers=1)
    assert sorted(opened) == sorted(str(p) for p in scan.files)  # every file once, none twice
    assert {scan.patient_id_of(int(f)) for f in scan.index["file"]} == {PHI_ID}


def test_pool_scan_equals_serial_scan(tmp_path, monkeypatch):
    _tree(tmp_path)
    import medcore.dicom.scan as scan_mod

    monkeypatch.setattr(scan_mod, "POOL_MIN_FILES", 1)
    monkeypatch.setattr(scan_mod, "CHUNK", 2)
    pooled = scan_tree(tmp_path, workers=2)
    serial = scan_tree(tmp_path, workers=1)
    cols = ["series_uid", "sop_instance_uid", "file", "rows", "cols"]
    pd.testing.assert_frame_equal(pooled.index[cols], serial.index[cols])
    assert pooled.skipped.equals(serial.skipped)
    assert pooled._patients == serial._patients and set(pooled._patients.values()) == {PHI_ID}
    assert [f.header for f in pooled.frames] == [f.header for f in serial.frames]


def test_deidentified_index_has_no_phi(tmp_path):
    _tree(tmp_path)
    scan = scan_tree(tmp_path, workers=1)
    deid = Deidentifier(b"s" * 32)
    safe = deidentified_index(scan, deid)
    path = tmp_path / "out" / "scan_index.parquet"
    path.parent.mkdir()
    safe.to_parquet(path)
    blob = path.read_bytes()
    for s in (PHI_ID, "Doe", "Jane", str(tmp_path)):
        assert s.encode() not in blob
    assert safe["subject"].str.startswith("sub-").all()
    assert set(safe["series_uid"]) == {deid.uid(u) for u in scan.index["series_uid"]}
