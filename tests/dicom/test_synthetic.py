"""Synthetic CT studies: valid DICOM, HU phantom, labels aligned in world space, planted PHI."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medcore.data.labels import read_label_manifest
from medcore.data.synthetic import LABEL_NAMES, ORGAN_HU, write_synthetic_studies
from medcore.dicom.deid import Deidentifier
from medcore.dicom.seg import SegmentationError, read_seg, write_seg

SHAPE = (24, 24, 8)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_synthetic_studies(tmp_path_factory.mktemp("syn"), n_patients=3, seed=5, shape=SHAPE)


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes() if path.suffix != ".gz" else np.asarray(nib.load(path).dataobj).tobytes())
    return h.hexdigest()


def test_layout_and_variety(manifest):
    kinds = [s.kind for s in manifest.series]
    assert kinds.count("localizer") == 1 and "oblique" in kinds
    assert manifest.n_studies == 4  # one study for patients 0 and 2, two for patient 1
    assert len({s.patient_index for s in manifest.series}) == 3
    stacks = [s for s in manifest.series if s.kind != "localizer"]
    assert len({s.pixel_spacing for s in stacks}) >= 3
    assert len({s.slice_spacing for s in stacks}) >= 2
    assert any(s.slice_thickness != s.slice_spacing for s in stacks)
    assert any(s.pixel_spacing[0] != s.pixel_spacing[1] for s in stacks)
    for s in manifest.series:
        files = sorted((manifest.root / s.folder).glob("*.dcm"))
        assert len(files) == s.n_slices
        assert all("^" not in part and "MRN" not in part for part in (manifest.root / s.folder).parts)
    assert manifest.n_files == sum(s.n_slices for s in manifest.series)


def test_headers_and_hounsfield_units(manifest):
    series = next(s for s in manifest.series if s.kind == "axial")
    ds = pydicom.dcmread(sorted((manifest.root / series.folder).glob("*.dcm"))[0])
    assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert ds.PixelRepresentation == 1 and ds.pixel_array.dtype == np.int16
    hu = ds.pixel_array.astype(np.float32) - 1024
    assert hu.min() == -1000  # air outside the body
    assert (np.abs(hu + 100) < 40).sum() > 0  # fat
    assert hu.max() > 600  # cortical bone
    assert ds.SeriesInstanceUID == series.series_instance_uid
    assert list(map(float, ds.ImageOrientationPatient)) == pytest.approx(series.orientation)


MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "DS": 16, "IS": 12, "DA": 8, "UI": 64}


def test_values_respect_vr_lengths(manifest):
    for series in manifest.series:
        ds = pydicom.dcmread(next((manifest.root / series.folder).glob("*.dcm")))
        for elem in ds.iterall():
            limit = MAX_LENGTH.get(elem.VR)
            if limit and elem.value not in (None, ""):
                values = elem.value if elem.VM > 1 else [elem.value]
                assert all(len(str(v)) <= limit for v in values), (elem.keyword, elem.value)


def test_localizer_is_marked_and_referenced(manifest):
    loc = next(s for s in manifest.series if s.kind == "localizer")
    ds = pydicom.dcmread(next((manifest.root / loc.folder).glob("*.dcm")))
    assert "LOCALIZER" in ds.ImageType
    main = next(s for s in manifest.series if s.study_instance_uid == loc.study_instance_uid and s.kind == "axial")
    ref = pydicom.dcmread(next((manifest.root / main.folder).glob("*.dcm"))).ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == ds.SOPInstanceUID


@pytest.mark.parametrize("kind", ["oblique", "axial"])
def test_masks_align_with_simpleitk_in_world_space(manifest, kind):
    """SimpleITK (an independent reader) sees each organ's HU exactly where the mask puts the label."""
    for series in [s for s in manifest.series if s.kind == kind][:2]:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(manifest.root / series.folder)))
        image = reader.Execute()
        hu = sitk.GetArrayFromImage(image)  # (slice, row, col), rescaled to HU
        mask_img = nib.load(manifest.root / series.mask)
        mask = np.asarray(mask_img.dataobj)
        assert mask.shape == (series.columns, series.rows, series.n_slices)
        np.testing.assert_allclose(mask_img.affine, series.affine_ras, atol=1e-6)
        idx = np.argwhere(np.ones(mask.shape, bool))
        ras = idx @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
        lps = ras * np.array([-1.0, -1.0, 1.0])
        cont = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in lps])
        np.testing.assert_allclose(cont, idx, atol=1e-3)  # the same voxel grid, to 1/1000 voxel
        values = hu[idx[:, 2], idx[:, 1], idx[:, 0]]
        labels = mask[tuple(idx.T)]
        present = set(np.unique(labels).tolist())
        assert {1, 2} <= present, present
        for label in present - {0}:
            assert np.median(values[labels == label]) == pytest.approx(ORGAN_HU[label], abs=6)


def test_label_manifest_maps_original_and_deidentified_uids(manifest):
    names, masks = read_label_manifest(manifest.label_manifest)
    assert names == LABEL_NAMES
    labelled = {s.series_instance_uid: s.mask for s in manifest.series if s.mask}
    assert set(masks) == set(labelled)
    for uid, path in masks.items():
        assert path == manifest.root / labelled[uid] and path.is_file()
    deid = Deidentifier(b"k" * 32)
    _, remapped = read_label_manifest(manifest.label_manifest, uid_map=deid.uid)
    assert set(remapped) == {deid.uid(u) for u in labelled}


def test_label_manifest_errors(tmp_path):
    bad = tmp_path / "labels.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="labels.json"):
        read_label_manifest(bad)
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        read_label_manifest(bad)


def test_planted_phi_is_really_in_the_files(manifest):
    """Every value the manifest claims to have planted occurs in the written DICOM bytes."""
    blob = b"".join(p.read_bytes() for p in sorted(manifest.dicom_dir.rglob("*.dcm"))).lower()
    missing = [v for v in manifest.planted_phi if v.lower().encode() not in blob]
    assert not missing, missing[:10]
    assert len(manifest.planted_phi) > 100
    ds = pydicom.dcmread(next(manifest.dicom_dir.rglob("*.dcm")))
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientAddress", "InstitutionName",
               "ReferringPhysicianName", "AccessionNumber", "StudyID", "OperatorsName", "StationName",
               "OtherPatientIDsSequence", "PatientComments", "DeviceSerialNumber", "StudyDescription",
               "SeriesDescription", "ImageComments", "RequestAttributesSequence"):
        assert ds.get(kw), kw
    assert any(elem.tag.is_private for elem in ds)
    assert 0x60003000 in ds  # overlay data


def test_deterministic_and_seeded(tmp_path):
    a = write_synthetic_studies(tmp_path / "a", n_patients=1, seed=3, shape=(12, 12, 3))
    b = write_synthetic_studies(tmp_path / "b", n_patients=1, seed=3, shape=(12, 12, 3))
    c = write_synthetic_studies(tmp_path / "c", n_patients=1, seed=4, shape=(12, 12, 3))
    assert _tree_digest(a.root) == _tree_digest(b.root)
    assert a.planted_phi == b.planted_phi and a.planted_phi != c.planted_phi
    assert a.series[0].series_instance_uid != c.series[0].series_instance_uid


def test_phi_in_paths_option_and_bad_arguments(tmp_path):
    m = write_synthetic_studies(tmp_path / "p", n_patients=1, shape=(12, 12, 2), phi_in_paths=True)
    folder = (m.root / m.series[0].folder).parent.name
    assert any(v in folder for v in m.planted_phi)
    with pytest.raises(ValueError, match="n_patients"):
        write_synthetic_studies(tmp_path / "x", n_patients=0)
    with pytest.raises(ValueError, match="too small"):
        write_synthetic_studies(tmp_path / "x", shape=(4, 4, 1))


def test_manifest_save_round_trip(manifest, tmp_path):
    path = manifest.save(tmp_path / "manifest.json")
    doc = json.loads(path.read_text())
    assert doc["planted_phi"] == manifest.planted_phi and len(doc["series"]) == len(manifest.series)


# --- DICOM SEG ---------------------------------------------------------------------------------------
def test_seg_round_trip_matches_the_masks(tmp_path):
    m = write_synthetic_studies(tmp_path / "s", n_patients=2, seed=2, shape=(20, 24, 5), seg=True)
    doc = json.loads(m.label_manifest.read_text())
    assert all("seg" in entry for entry in doc["series"])
    by_uid = {s.series_instance_uid: s for s in m.series}
    for entry in doc["series"]:
        series = by_uid[entry["series_instance_uid"]]
        mask = np.asarray(nib.load(m.root / series.mask).dataobj)
        result = read_seg(m.label_manifest.parent / entry["seg"])
        np.testing.assert_array_equal(result.labels, mask)
        np.testing.assert_allclose(result.affine, series.affine_ras, atol=1e-4)
        assert result.segments == {k: v for k, v in LABEL_NAMES.items() if k}
        assert result.referenced_series_uid == series.series_instance_uid
        # pydicom decodes the 1-bit frames independently of medcore's unpacking
        ds = pydicom.dcmread(m.label_manifest.parent / entry["seg"])
        frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
        first = ds.PerFrameFunctionalGroupsSequence[0]
        segment = first.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        ipp = [float(v) for v in first.PlanePositionSequence[0].ImagePositionPatient]
        ras = np.array([-ipp[0], -ipp[1], ipp[2], 1.0])
        k = int(np.rint((np.linalg.inv(np.asarray(series.affine_ras)) @ ras)[2]))  # the frame's slice, by position
        np.testing.assert_array_equal(frames[0].astype(bool), (mask[:, :, k] == segment).T)


def test_seg_reader_on_a_real_seg(shared_data):
    """pydicom_data/liver.dcm, a SEG written by another tool: our unpacking agrees with pydicom's."""
    path = shared_data / "dicom" / "pydicom_data" / "files" / "liver.dcm"
    result = read_seg(path)
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    assert result.segments and result.labels.shape[:2] == (ds.Columns, ds.Rows)
    assert int((result.labels > 0).sum()) == int(frames.astype(bool).sum())


def test_seg_errors(tmp_path, manifest):
    series = next(s for s in manifest.series if s.mask)
    mask = np.asarray(nib.load(manifest.root / series.mask).dataobj)
    with pytest.raises(SegmentationError, match="does not match"):
        write_seg(mask[:, :, :-1], manifest.root / series.folder, tmp_path / "x.dcm", LABEL_NAMES)
    with pytest.raises(SegmentationError, match="no name"):
        write_seg(mask, manifest.root / series.folder, tmp_path / "x.dcm", {1: "liver"})
    with pytest.raises(SegmentationError, match="not a DICOM SEG"):
        read_seg(next((manifest.root / series.folder).glob("*.dcm")))
