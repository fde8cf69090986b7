"""De-identification: keyed UID remap, pseudonyms, date shift, Basic Profile actions, the key file."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from medcore.data.synthetic import write_synthetic_studies
from medcore.dicom.deid import (
    BASIC_PROFILE,
    KEY_ENV,
    DeidentificationError,
    Deidentifier,
    load_or_create_key,
)

KEY = bytes(range(32))
UID_RE = re.compile(r"^2\.25\.[1-9][0-9]*$")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic_studies(tmp_path_factory.mktemp("syn"), n_patients=2, shape=(16, 16, 4))


def _all_text(ds: Dataset) -> list[str]:
    """Every element value of ``ds`` (recursively, file meta included) as text."""
    out = []
    datasets = [ds] + ([ds.file_meta] if getattr(ds, "file_meta", None) is not None else [])
    for d in datasets:
        for elem in d.iterall():
            if elem.VR == "SQ" or elem.tag == 0x7FE00010:
                continue
            value = elem.value
            if isinstance(value, bytes):
                out.append(value.decode("latin-1"))
            else:
                out.append(str(value))
    return out


def _d(text: str) -> dt.date:
    return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))


# --- identifiers -----------------------------------------------------------------------------------
def test_uid_is_valid_deterministic_and_keyed():
    a, b = Deidentifier(KEY), Deidentifier(KEY[::-1])
    uid = "1.2.826.0.1.3680043.2.1125.1.34918616334750294149839565085991567"
    assert a.uid(uid) == Deidentifier(KEY).uid(uid)
    assert UID_RE.match(a.uid(uid)) and len(a.uid(uid)) <= 64
    assert a.uid(uid) != b.uid(uid)
    assert a.uid(uid) != a.uid(uid + "1")
    assert a.uid(uid) != uid
    many = {a.uid(f"1.2.3.{i}") for i in range(2000)}
    assert len(many) == 2000 and all(UID_RE.match(u) and len(u) <= 64 for u in many)


def test_standard_uids_and_empty_values_are_kept():
    deid = Deidentifier(KEY)
    assert deid.uid("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"
    assert deid.uid("") == ""


def test_subject_and_session_pseudonyms():
    deid = Deidentifier(KEY)
    sub, ses = deid.subject("MRN12345"), deid.session("1.2.3.4")
    assert re.fullmatch(r"sub-[0-9a-f]{10}", sub) and re.fullmatch(r"ses-[0-9a-f]{10}", ses)
    assert sub == deid.subject("MRN12345") and sub != deid.subject("MRN12346")
    assert sub != Deidentifier(KEY[::-1]).subject("MRN12345")
    assert "12345" not in sub


def test_key_must_be_long_enough_and_is_never_shown():
    with pytest.raises(DeidentificationError, match="at least 16"):
        Deidentifier(b"short")
    with pytest.raises(TypeError):
        Deidentifier("not-bytes" * 4)  # type: ignore[arg-type]
    deid = Deidentifier(KEY)
    assert KEY.hex() not in repr(deid) and deid.key_id in repr(deid)


# --- dates -----------------------------------------------------------------------------------------
def test_date_shift_is_per_patient_in_range_and_keeps_intervals():
    deid = Deidentifier(KEY)
    shifts = [deid.date_shift_days(f"P{i}") for i in range(200)]
    assert all(-3650 <= s <= -1 for s in shifts)
    assert len(set(shifts)) > 100
    assert deid.date_shift_days("P7") == Deidentifier(KEY).date_shift_days("P7")
    a, b = deid.shift_date("20240229", "P7"), deid.shift_date("20240310", "P7")
    assert (_d(b) - _d(a)).days == 10
    assert (_d("20240229") - _d(a)).days == -deid.date_shift_days("P7")


def test_shift_date_formats():
    deid = Deidentifier(KEY)
    days = deid.date_shift_days("X")
    expect = (dt.date(2020, 1, 31) + dt.timedelta(days=days)).strftime("%Y%m%d")
    assert deid.shift_date("20200131", "X") == expect
    assert deid.shift_date("2020.01.31", "X") == expect  # ACR-NEMA style
    assert deid.shift_date("20200131123000.5+0100", "X") == expect + "123000.5"  # offset dropped
    assert deid.shift_date("20200131\\20200131", "X") == expect + "\\" + expect
    year_only = (dt.date(2020, 1, 1) + dt.timedelta(days=days)).strftime("%Y%m%d")
    assert deid.shift_date("2020", "X") == year_only
    assert deid.shift_date("", "X") == ""


@pytest.mark.parametrize("bad", ["MRN1234567", "20201341", "yesterday"])
def test_bad_dates_raise_without_echoing_the_value(bad):
    with pytest.raises(DeidentificationError) as info:
        Deidentifier(KEY).shift_date(bad, "X")
    assert bad not in str(info.value)
    assert "fix" in str(info.value)


# --- the Basic Profile table -----------------------------------------------------------------------
def test_table_matches_the_dicom_dictionary():
    """Each entry's keyword is the one pydicom's data dictionary (an independent source) gives the tag."""
    assert len(BASIC_PROFILE) >= 250
    valid = {"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"}
    for tag, (keyword, action) in BASIC_PROFILE.items():
        assert action in valid, (tag, action)
        assert keyword_for_tag(tag) == keyword, (f"{tag}", keyword, keyword_for_tag(tag))


# --- datasets --------------------------------------------------------------------------------------
def _files(manifest, kind="axial"):
    series = next(s for s in manifest.series if s.kind == kind)
    return sorted((manifest.root / series.folder).glob("*.dcm"))


def test_dataset_removes_every_planted_value(synthetic):
    deid = Deidentifier(KEY)
    planted = [p.lower() for p in synthetic.planted_phi]
    raw = "\n".join(_all_text(pydicom.dcmread(_files(synthetic)[0]))).lower()
    assert sum(p in raw for p in planted) > 60, "the input must carry the planted PHI"
    for path in _files(synthetic, "axial") + _files(synthetic, "oblique") + _files(synthetic, "localizer"):
        out = deid.dataset(pydicom.dcmread(path))
        blob = "\n".join(_all_text(out)).lower()
        leaked = [p for p in planted if p in blob]
        assert not leaked, f"{path.name}: {leaked[:5]}"
        assert not set(synthetic.original_uids) & set(re.findall(r"[0-9.]{10,}", blob))


def test_dataset_actions(synthetic):
    deid = Deidentifier(KEY)
    path = _files(synthetic)[0]
    original = pydicom.dcmread(path)
    before = original.to_json_dict()
    out = deid.dataset(original)
    assert original.to_json_dict() == before, "the input dataset must not be modified"
    patient = str(original.PatientID)
    assert out.PatientIdentityRemoved == "YES"
    assert out.PatientID == deid.subject(patient) == str(out.PatientName)
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert {"113100", "113107"} <= codes
    assert out.DeidentificationMethod and len(out.DeidentificationMethod) <= 64
    # U: UIDs remapped consistently, standard UIDs kept
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert out[kw].value == deid.uid(original[kw].value)
    assert out.SOPClassUID == original.SOPClassUID
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in out.file_meta
    # Z: present but empty; X: gone
    for kw in ("AccessionNumber", "StudyID", "ReferringPhysicianName", "PatientBirthDate", "PatientSex"):
        assert kw in out and not out[kw].value, kw
    for kw in ("InstitutionName", "InstitutionAddress", "StationName", "OperatorsName", "SeriesDescription",
               "StudyDescription", "PatientAddress", "OtherPatientIDsSequence", "ImageComments",
               "PatientAge", "PatientWeight", "RequestAttributesSequence", "DeviceSerialNumber"):
        assert kw not in out or not out[kw].value, kw
    # private tags, overlays removed
    assert not any(elem.tag.is_private for elem in out)
    assert not any(0x6000 <= elem.tag.group <= 0x60FF for elem in out)
    # dates shifted by the patient's days, times kept
    days = deid.date_shift_days(patient)
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        if kw in out and out[kw].value:
            assert (_d(out[kw].value) - _d(original[kw].value)).days == days, kw
    assert out.AcquisitionDateTime[8:] == original.AcquisitionDateTime[8:]
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"
    # geometry and pixels untouched
    for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "RescaleIntercept",
               "RescaleSlope", "Rows", "Columns", "SliceThickness", "ImageType"):
        assert out[kw].value == original[kw].value, kw
    np.testing.assert_array_equal(out.pixel_array, original.pixel_array)


def test_sequence_references_remap_consistently(synthetic):
    deid = Deidentifier(KEY)
    localizer = pydicom.dcmread(_files(synthetic, "localizer")[0])
    image = deid.dataset(pydicom.dcmread(_files(synthetic)[0]))
    ref = image.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == deid.dataset(localizer).SOPInstanceUID
    assert ref.ReferencedSOPClassUID == localizer.SOPClassUID


def test_output_is_valid_dicom(tmp_path, synthetic):
    out = Deidentifier(KEY).dataset(pydicom.dcmread(_files(synthetic)[0]))
    out.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    back = pydicom.dcmread(tmp_path / "x.dcm")
    assert back.PatientIdentityRemoved == "YES" and back.pixel_array.shape == (16, 16)


def test_unlisted_names_are_blanked_and_burned_in_refused():
    ds = Dataset()
    ds.PatientID = "MRN99"
    ds.add_new(0x00321034, "PN", "HIDDEN^NAME")  # not in the table: blanked because it is a PN
    ds.add_new(0x00081030, "LO", "keep me out")
    out = Deidentifier(KEY).dataset(ds)
    assert "HIDDEN" not in str(out) and "keep me out" not in str(out)
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DeidentificationError, match="BurnedInAnnotation"):
        Deidentifier(KEY).dataset(ds)


def test_nested_and_unknown_elements():
    """Table actions apply inside sequences the table does not list; unknown public data is dropped."""
    inner = Dataset()
    inner.InstitutionName = "Nested General Hospital"
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
    inner.CodeMeaning = "kept text"
    ds = Dataset()
    ds.PatientID = "MRN77"
    ds.ProcedureCodeSequence = [inner]  # not in the Basic Profile table: recursed into
    ds.add_new(0x00191001, "LO", "private value")
    ds.add_new(0x00227777, "UN", b"opaque public bytes")  # no dictionary entry, no table entry
    deid = Deidentifier(KEY)
    out = deid.dataset(ds)
    item = out.ProcedureCodeSequence[0]
    assert "InstitutionName" not in item or not item.InstitutionName
    assert item.ReferencedSOPInstanceUID == deid.uid("1.2.3.4.5.6")
    assert item.CodeMeaning == "kept text"
    assert 0x00191001 not in out and 0x00227777 not in out


def test_real_ct_headers(shared_data):
    """Real GE and Philips CT: identifying values gone, geometry kept, output writable."""
    files = sorted((shared_data / "dicom" / "dcm_qa_ct").rglob("*"))
    files = [f for f in files if f.is_file() and f.name != "DICOMDIR" and "Ref" not in f.parts][:6]
    assert files, "dcm_qa_ct has no DICOM files"
    deid = Deidentifier(KEY)
    checked = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            continue
        out = deid.dataset(ds)
        for kw in ("PatientName", "PatientID", "InstitutionName", "StudyInstanceUID"):
            value = str(ds.get(kw, "") or "")
            if len(value) > 3:
                assert value not in "\n".join(_all_text(out)), kw
        if "ImagePositionPatient" in ds:
            assert out.ImagePositionPatient == ds.ImagePositionPatient
        checked += 1
    assert checked


# --- the key ---------------------------------------------------------------------------------------
def test_key_file_created_private_and_stable(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "cfg" / "deid.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == key
    os.chmod(path, 0o644)
    with pytest.raises(DeidentificationError, match="chmod 600"):
        load_or_create_key(path)


def test_key_from_env_and_refused_inside_data(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "ab" * 32)
    assert load_or_create_key(tmp_path / "never-created.key") == bytes([0xAB]) * 32
    assert not (tmp_path / "never-created.key").exists()
    monkeypatch.setenv(KEY_ENV, "zz")
    with pytest.raises(DeidentificationError, match="not hexadecimal"):
        load_or_create_key()
    monkeypatch.delenv(KEY_ENV)
    data = tmp_path / "data"
    with pytest.raises(DeidentificationError, match="inside the data/output tree"):
        load_or_create_key(data / "keys" / "deid.key", forbidden_roots=[data])
    assert not (data / "keys").exists()


def test_default_key_path_is_under_config(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    key = load_or_create_key()
    assert (tmp_path / "medcore" / "deid.key").is_file() and len(key) == 32
    assert Path(tmp_path / "medcore" / "deid.key").read_text().strip() == key.hex()
