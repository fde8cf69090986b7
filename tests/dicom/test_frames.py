"""Frame expansion from headers: mosaic tiles, enhanced multi-frame, errors, no PHI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dicom_factory import csa_header, reference_at_frames, world_mismatch
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import medcore.dicom.reader as reader_module
from medcore.data.synthetic import new_dicom_dataset
from medcore.dicom import mosaic
from medcore.dicom.decode import load_pixels, to_real_values
from medcore.dicom.frame import Frame, NotDicomError, UnsupportedDicomError
from medcore.dicom.reader import read_frames
from medcore.dicom.values import HEADER_KEYWORDS, LazyHeader

SKIP_SUFFIXES = (".nii", ".gz", ".json", ".bval", ".bvec", ".txt", ".pdf")


# ------------------------------------------------------------------------------------ mosaic


def test_mosaic_tiles_match_reference_geometry(shared_data):
    root = shared_data / "dicom" / "dcm_qa"
    compared = 0
    for folder in sorted(p for p in (root / "In" / "Orientation").glob("*/*") if p.is_dir()):
        per_file = [read_frames(p) for p in sorted(folder.iterdir()) if not p.name.endswith(SKIP_SUFFIXES)]
        per_file.sort(key=lambda fr: fr[0].instance_number)
        series = per_file[0][0].series_number
        (ref_path,) = list((root / "Ref").glob(f"*_{series}.nii"))
        ref = nib.load(ref_path)
        for volume, frames in enumerate(per_file):
            assert all(f.is_mosaic for f in frames)
            assert [f.frame_index for f in frames] == list(range(ref.shape[2]))
            assert (frames[0].rows, frames[0].cols) == ref.shape[:2]
            pixels = load_pixels(frames)
            worst, bad = world_mismatch(frames, pixels, ref, volume)
            assert worst < 1e-3 and bad == 0, (folder.name, volume)
            compared += 1
    print(f"compared {compared} mosaic volumes against dcm2niix references")
    assert compared == 30


def test_csa_header_parses_number_of_images(shared_data):
    import pydicom

    ds = pydicom.dcmread(shared_data / "dicom" / "dcm_qa_ts" / "In" / "1.dcm", stop_before_pixels=True)
    csa = mosaic.parse_csa(ds[0x0029, 0x1010].value)
    assert int(csa["NumberOfImagesInMosaic"][0]) == 35
    assert len(csa["SliceNormalVector"]) == 3
    del ds[0x0019, 0x100A]
    assert mosaic.number_of_tiles(ds) == 35
    with pytest.raises(ValueError):
        mosaic.parse_csa(b"not a csa header at all")


# ------------------------------------------------------------------------------------ enhanced


def test_siemens_enhanced_frames_match_reference(shared_data):
    root = shared_data / "dicom" / "dcm_qa_enh"
    ref = nib.load(root / "Ref" / "Siemens_REST1_w_SMS_PF7-8_6.nii")
    paths = sorted((root / "In" / "Siemens" / "XA10").glob("*.dcm"))
    for volume, path in enumerate(paths):
        frames = read_frames(path)
        assert len(frames) == 6 and {f.number_of_frames for f in frames} == {6}
        assert {f.temporal_position for f in frames} == {volume + 1}
        assert frames[0].header["RepetitionTime"] == 500.0 and frames[0].echo_time == 30.0
        positions = np.array([f.ipp for f in frames])
        assert len(np.unique(positions.round(3), axis=0)) == 6
        worst, bad = world_mismatch(frames, load_pixels(frames), ref, volume)
        assert worst < 1e-3 and bad == 0


def test_philips_fieldmap_per_frame_type_and_scaling(shared_data):
    root = shared_data / "dicom" / "dcm_qa_enh"
    frames = read_frames(root / "In" / "Philips" / "IM_0027_fMAP.dcm")
    assert len(frames) == 64
    magnitude = [f for f in frames if f.image_type[-1] == "M"]
    fieldmap = [f for f in frames if f.image_type[-1] == "FIELD_MAP"]
    assert len(magnitude) == len(fieldmap) == 32
    assert {(f.slope, f.intercept) for f in fieldmap} == {(0.24420024420024, -500.0)}
    assert {f.echo_time for f in magnitude} == {1.52}
    # Field map in Hz: dcm2niix's reference holds RescaleSlope/Intercept-scaled values.
    ref = nib.load(root / "Ref" / "Philips_WIP_B0_NS_801_e2_fieldmaphz.nii")
    real = to_real_values(load_pixels(fieldmap), fieldmap)
    assert real.dtype == np.float32
    _, expected = reference_at_frames(fieldmap, ref)
    for k in range(len(fieldmap)):
        np.testing.assert_allclose(real[k], expected[k], atol=0.01)
    # Magnitude: dcm2niix writes Philips floating-point values, stored / PhilipsScaleSlope.
    sidecar = json.loads((root / "Ref" / "Philips_WIP_B0_NS_801_e1.json").read_text())
    ref = nib.load(root / "Ref" / "Philips_WIP_B0_NS_801_e1.nii")
    stored = load_pixels(magnitude).astype(np.float64) / sidecar["PhilipsScaleSlope"]
    _, expected = reference_at_frames(magnitude, ref)
    for k in range(len(magnitude)):
        np.testing.assert_allclose(stored[k], expected[k], rtol=1e-4, atol=1e-3)


def test_enhanced_ct_positions(shared_data):
    frames = read_frames(shared_data / "dicom" / "pydicom_data" / "files" / "eCT_Supplemental.dcm")
    assert [f.ipp for f in frames] == [(99.5, -301.5, -159.0), (99.5, -301.5, -149.0)]
    assert all(f.iop == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0) for f in frames)
    assert frames[0].image_type == ("DERIVED", "PRIMARY", "PERFUSION", "RCBF")
    assert {f.intercept for f in frames} == {-1024.0}
    assert load_pixels(frames).shape == (2, 512, 512)


def test_fast_header_equals_pydicom_header(shared_data, monkeypatch):
    """The fast parser and pydicom give identical frames for every real file."""
    files = [p for p in sorted((shared_data / "dicom").rglob("*"))
             if p.is_file() and not p.name.endswith(SKIP_SUFFIXES) and p.name != "LICENSE"]
    files = files[::3]  # a third of the corpus keeps the test fast; every folder is represented

    def outcome(path):
        try:
            return read_frames(path)
        except (NotDicomError, UnsupportedDicomError) as exc:
            return exc.code

    checked = 0
    for path in files:
        monkeypatch.setattr(reader_module, "USE_FAST_HEADER", True)
        fast = outcome(path)
        monkeypatch.setattr(reader_module, "USE_FAST_HEADER", False)
        slow = outcome(path)
        assert fast == slow, path
        if isinstance(fast, list):
            assert [f.header for f in fast] == [f.header for f in slow], path
            assert [f.pixel_offset for f in fast] == [f.pixel_offset for f in slow], path
            checked += 1
    assert checked > 100


# ------------------------------------------------------------------------------------ synthetic


def _dataset(sop_class="1.2.840.10008.5.1.4.1.1.4", syntax=ExplicitVRLittleEndian) -> Dataset:
    ds = new_dicom_dataset(sop_class, transfer_syntax=syntax)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.PatientName = "Secret^Person"
    ds.PatientID = "PHI-ID-424242"
    ds.PatientBirthDate = "19610203"
    ds.InstitutionName = "Hidden General Hospital"
    ds.ProtocolName = "Protocol for Secret Person"
    ds.Manufacturer = "ACME"
    ds.RepetitionTime = 2000.0
    ds.StudyDate = "20240105"
    return ds


def _image(ds: Dataset, rows=4, cols=6, frames=1, ipp=(1.0, 2.0, 3.0)) -> Dataset:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient = list(ipp)
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.25]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.AcquisitionTime = "101010.5"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = np.arange(frames * rows * cols, dtype=np.uint16).tobytes()
    return ds


def _save(ds: Dataset, path: Path, implicit=False) -> Path:
    ds.save_as(path, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    return path


def test_single_frame_fields_and_no_phi(tmp_path):
    path = _save(_image(_dataset()), tmp_path / "img.dcm")
    (frame,) = read_frames(path)
    assert frame.rows == 4 and frame.cols == 6 and frame.frame_index == 0
    assert frame.ipp == (1.0, 2.0, 3.0) and frame.pixel_spacing == (0.5, 0.25)
    assert frame.slope == 1.0 and frame.intercept == 0.0 and not frame.is_localizer
    assert frame.acquisition_time == "101010.5"
    assert set(frame.header) <= set(HEADER_KEYWORDS)
    assert frame.header["Manufacturer"] == "ACME" and frame.header["RepetitionTime"] == 2000.0
    text = repr(dataclasses.asdict(frame))
    for phi in ("Secret", "PHI-ID-424242", "19610203", "Hidden General", "Protocol for", "20240105"):
        assert phi not in text
    np.testing.assert_array_equal(load_pixels([frame])[0], np.arange(24).reshape(4, 6))
    with pytest.raises(dataclasses.FrozenInstanceError):
        frame.rows = 5  # type: ignore[misc]
    assert hash(frame) == hash(read_frames(path)[0])


def test_lazy_header_equals_eager_header_and_pickles_to_a_dict(tmp_path, monkeypatch):
    import pickle

    path = _save(_image(_dataset()), tmp_path / "a.dcm")
    (frame,) = read_frames(path)
    assert isinstance(frame.header, LazyHeader)  # the fast reader was used
    assert 0x00100020 not in frame.header._source  # no PatientID kept for later
    monkeypatch.setattr(reader_module, "USE_FAST_HEADER", False)
    (eager,) = read_frames(path)
    assert type(eager.header) is dict and eager.header["Manufacturer"] == "ACME"
    copy = pickle.loads(pickle.dumps(frame))  # what a scan worker sends back
    assert type(copy.header) is dict
    assert frame.header == eager.header == copy.header and dict(frame.header) == eager.header


def test_implicit_vr_without_preamble(tmp_path):
    ds = _image(_dataset(syntax=ImplicitVRLittleEndian))
    path = tmp_path / "raw.dcm"
    ds.save_as(path, enforce_file_format=False, implicit_vr=True, little_endian=True)
    assert path.read_bytes()[128:132] != b"DICM"
    (frame,) = read_frames(path)
    assert frame.ipp == (1.0, 2.0, 3.0) and frame.rows == 4
    np.testing.assert_array_equal(load_pixels([frame])[0], np.arange(24).reshape(4, 6))


def test_localizer_flag(tmp_path):
    ds = _image(_dataset())
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    (frame,) = read_frames(_save(ds, tmp_path / "loc.dcm"))
    assert frame.is_localizer


@pytest.mark.parametrize("sop,name", [("1.2.840.10008.5.1.4.1.1.88.22", "sr"),
                                      ("1.2.840.10008.5.1.4.1.1.481.3", "rtstruct"),
                                      ("1.2.840.10008.5.1.4.1.1.11.1", "pr")])
def test_non_image_objects_refused(tmp_path, sop, name):
    path = _save(_dataset(sop_class=sop), tmp_path / f"{name}.dcm")
    with pytest.raises(UnsupportedDicomError) as err:
        read_frames(path)
    assert err.value.code == "unsupported_sop_class" and err.value.path == path
    assert sop in err.value.reason


def test_image_without_pixel_data_refused(tmp_path):
    ds = _image(_dataset())
    del ds.PixelData
    path = _save(ds, tmp_path / "nopix.dcm")
    with pytest.raises(UnsupportedDicomError) as err:
        read_frames(path)
    assert err.value.code == "no_pixel_data" and "nopix.dcm" in str(err.value)


def test_garbage_after_preamble_is_not_dicom(tmp_path):
    path = tmp_path / "fake.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 7)
    with pytest.raises((NotDicomError, UnsupportedDicomError)):
        read_frames(path)
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    with pytest.raises(NotDicomError) as err:
        read_frames(png)
    assert err.value.code == "not_dicom"


def test_classic_multiframe_grid_offsets(tmp_path):
    ds = _image(_dataset(sop_class="1.2.840.10008.5.1.4.1.1.481.2"), frames=3, ipp=(0.0, 0.0, 10.0))
    ds.Modality = "RTDOSE"
    ds.FrameIncrementPointer = 0x3004000C
    ds.GridFrameOffsetVector = [10.0, 12.5, 15.0]  # absolute form: first equals the IPP z
    frames = read_frames(_save(ds, tmp_path / "dose.dcm"))
    assert [f.ipp for f in frames] == [(0.0, 0.0, 10.0), (0.0, 0.0, 12.5), (0.0, 0.0, 15.0)]
    pixels = load_pixels(frames[::-1])
    np.testing.assert_array_equal(pixels[0], np.arange(48, 72).reshape(4, 6))


def test_classic_multiframe_without_geometry_is_temporal(tmp_path):
    ds = _image(_dataset(), frames=2)
    frames = read_frames(_save(ds, tmp_path / "cine.dcm"))
    assert [f.temporal_position for f in frames] == [1, 2]
    assert [f.frame_index for f in frames] == [0, 1]


def test_enhanced_functional_groups(tmp_path):
    ds = _image(_dataset(sop_class="1.2.840.10008.5.1.4.1.1.4.1"), frames=2)
    del ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing

    def item(**kw):
        it = Dataset()
        for k, v in kw.items():
            setattr(it, k, v)
        return it

    shared = item(
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])]),
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.9, 0.8], SliceThickness=3.0)]),
    )
    per = []
    for i in range(2):
        grad = item(DiffusionGradientOrientation=[0.0, 0.6, 0.8])
        per.append(item(
            PlanePositionSequence=Sequence([item(ImagePositionPatient=[5.0 + i, 0.0, 0.0])]),
            PixelValueTransformationSequence=Sequence([item(RescaleSlope=1.5 + i, RescaleIntercept=-2)]),
            MREchoSequence=Sequence([item(EffectiveEchoTime=10.0 * (i + 1))]),
            FrameContentSequence=Sequence([item(TemporalPositionIndex=i + 1, DimensionIndexValues=[1, i + 1],
                                               FrameAcquisitionDateTime="20240105101112.5")]),
            MRDiffusionSequence=Sequence([item(DiffusionBValue=1000.0,
                                               DiffusionGradientDirectionSequence=Sequence([grad]))]),
        ))
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per)
    frames = read_frames(_save(ds, tmp_path / "enh.dcm"))
    assert len(frames) == 2
    f0, f1 = frames
    assert f0.iop == (0.0, 1.0, 0.0, 0.0, 0.0, -1.0) and f0.pixel_spacing == (0.9, 0.8)
    assert f0.ipp == (5.0, 0.0, 0.0) and f1.ipp == (6.0, 0.0, 0.0)
    assert (f0.slope, f1.slope, f0.intercept) == (1.5, 2.5, -2.0)
    assert (f0.echo_time, f1.echo_time) == (10.0, 20.0)
    assert (f0.temporal_position, f1.dimension_index) == (1, (1, 2))
    assert f0.diffusion_bvalue == 1000.0 and f0.diffusion_gradient == (0.0, 0.6, 0.8)
    assert f0.acquisition_time == "101112.5"  # the date is dropped
    assert f0.slice_thickness == 3.0
    real = to_real_values(load_pixels(frames), frames)
    assert real.dtype == np.float32
    np.testing.assert_allclose(real[1, 0, :2], [24 * 2.5 - 2, 25 * 2.5 - 2])


def test_synthetic_mosaic_tiles_and_positions(tmp_path):
    k, r, c, n = 2, 3, 4, 3
    ds = _image(_dataset(), rows=k * r, cols=k * c, ipp=(-10.0, -20.0, 5.0))
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND", "MOSAIC"]
    ds.Manufacturer = "SIEMENS"
    ds.SpacingBetweenSlices = 4.0
    ds.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
    ds.add_new((0x0029, 0x1010), "OB", csa_header({"NumberOfImagesInMosaic": [str(n)],
                                             "SliceNormalVector": ["0", "0", "-1"]}))
    tiles = np.arange(k * k * r * c, dtype=np.uint16).reshape(k * k, r, c)
    ds.PixelData = tiles.reshape(k, k, r, c).swapaxes(1, 2).reshape(k * r, k * c).tobytes()
    frames = read_frames(_save(ds, tmp_path / "mosaic.dcm"))
    assert len(frames) == n and all(f.is_mosaic and (f.rows, f.cols) == (r, c) for f in frames)
    # corner moves by half the mosaic/tile size difference: columns 0.25 mm, rows 0.5 mm
    first = (-10.0 + 0.25 * (k * c - c) / 2, -20.0 + 0.5 * (k * r - r) / 2, 5.0)
    assert frames[0].ipp == pytest.approx(first)
    assert frames[2].ipp == pytest.approx((first[0], first[1], 5.0 - 8.0))
    np.testing.assert_array_equal(load_pixels(frames), tiles[:n])
    np.testing.assert_array_equal(load_pixels([frames[2], frames[0]]), tiles[[2, 0]])


def test_frame_contract_fields():
    names = {f.name for f in dataclasses.fields(Frame)}
    required = {
        "path", "frame_index", "sop_instance_uid", "sop_class_uid", "study_uid", "series_uid",
        "series_number", "modality", "image_type", "rows", "cols", "samples_per_pixel", "photometric",
        "bits_allocated", "bits_stored", "pixel_representation", "iop", "ipp", "pixel_spacing",
        "slice_thickness", "spacing_between_slices", "slope", "intercept", "echo_number", "echo_time",
        "temporal_position", "acquisition_number", "trigger_time", "instance_number", "acquisition_time",
        "diffusion_bvalue", "diffusion_gradient", "is_localizer", "transfer_syntax_uid", "header",
    }
    assert required <= names


def test_read_frames_and_patient_keeps_phi_off_frames(tmp_path):
    from medcore.dicom.reader import read_frames_and_patient

    path = _save(_image(_dataset()), tmp_path / "p.dcm")
    frames, patient = read_frames_and_patient(path)
    assert patient == "PHI-ID-424242"
    assert frames == read_frames(path)
    assert "PHI-ID-424242" not in repr(dataclasses.asdict(frames[0]))


def test_file_cut_inside_header_is_truncated(tmp_path):
    ds = _image(_dataset())
    ds.add_new((0x0009, 0x0010), "LO", "ACME")
    ds.add_new((0x0009, 0x1001), "OB", bytes(40000))  # a large private block, like a CSA header
    full = _save(ds, tmp_path / "full.dcm").read_bytes()
    for cut in (600, 20000):
        path = tmp_path / f"cut{cut}.dcm"
        path.write_bytes(full[:cut])
        with pytest.raises(UnsupportedDicomError) as err:
            read_frames(path)
        assert err.value.code == "truncated" and path.name in str(err.value)


def test_zero_filled_file_is_not_dicom(tmp_path):
    path = tmp_path / "zeros.dcm"
    path.write_bytes(bytes(4096))
    with pytest.raises(NotDicomError):
        read_frames(path)


def test_uih_grid_tiles_match_reference(shared_data):
    root = shared_data / "dicom" / "dcm_qa_uih"
    (ref_path,) = list((root / "Ref").glob("*.nii"))
    ref = nib.load(ref_path)
    bvals = np.loadtxt(ref_path.with_suffix(".bval"))
    per_file = [read_frames(p) for p in sorted((root / "In").glob("*/*/*.dcm"))]
    per_file.sort(key=lambda fr: fr[0].instance_number)
    assert len(per_file) == ref.shape[3] == len(bvals)
    for volume, frames in enumerate(per_file):
        assert len(frames) == ref.shape[2] and frames[0].is_mosaic
        worst, bad = world_mismatch(frames, load_pixels(frames), ref, volume)
        assert worst < 1e-3 and bad == 0, volume
        assert frames[0].diffusion_bvalue == pytest.approx(bvals[volume], rel=1e-4, abs=1e-3)
        grad = frames[0].diffusion_gradient
        if bvals[volume] > 50:
            assert np.linalg.norm(grad) == pytest.approx(1.0, abs=1e-3)
