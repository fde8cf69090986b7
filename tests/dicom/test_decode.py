"""Pixel decoding: every transfer syntax, BitsStored handling, rescaling, clear errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import reference_at_frames, world_mismatch
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medcore.data.synthetic import new_dicom_dataset
from medcore.dicom import decode
from medcore.dicom.decode import load_pixels, to_real_values
from medcore.dicom.frame import DecodeError, NotDicomError, UnsupportedDicomError
from medcore.dicom.reader import read_frames

#: dcm_qa_ts: 9 files, 7 distinct syntaxes (two JPEG lossless and two JPEG-LS encodings).
TS_NAMES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
}


# ------------------------------------------------------------------------------------ real data


def test_dcm_qa_ts_all_syntaxes_identical(shared_data):
    folder = shared_data / "dicom" / "dcm_qa_ts"
    files = sorted((folder / "In").glob("*.dcm"))
    assert len(files) == 9
    seen, reference = set(), None
    for path in files:
        frames = read_frames(path)
        seen.add(frames[0].transfer_syntax_uid)
        pixels = load_pixels(frames)
        assert pixels.shape == (35, 64, 64) and pixels.dtype == np.uint16
        if reference is None:
            reference = pixels
            worst, bad = world_mismatch(frames, pixels, nib.load(folder / "Ref" / "1.nii"))
            assert worst < 1e-3 and bad == 0
        else:
            np.testing.assert_array_equal(pixels, reference, err_msg=str(path))
    assert seen == TS_NAMES


@pytest.mark.parametrize("name,series", [("12bitUnsigned", 2), ("12bitUnsigned_0x0F0F", 3),
                                         ("12bitSigned_0x0F0F", 4)])
def test_dcm_qa_12bit_matches_reference(shared_data, name, series):
    folder = shared_data / "dicom" / "dcm_qa_12bit"
    frames = read_frames(folder / "In" / f"{name}.dcm")
    assert frames[0].bits_stored == 12 and frames[0].bits_allocated == 16
    pixels = load_pixels(frames)
    if frames[0].pixel_representation:
        assert pixels.dtype == np.int16 and pixels.min() >= -2048 and pixels.max() <= 2047
        assert pixels.min() < 0
    else:
        assert pixels.dtype == np.uint16 and pixels.max() <= 4095
    worst, bad = world_mismatch(frames, pixels, nib.load(folder / "Ref" / f"{series}.nii"))
    assert worst < 1e-3 and bad == 0


def _series(folder: Path):
    frames = [f for path in sorted(folder.glob("*.dcm")) for f in read_frames(path)]
    return frames, load_pixels(frames)


def test_dicom2nifti_generic_variants_match_ground_truth(shared_data):
    root = shared_data / "dicom" / "dicom2nifti" / "generic"
    variants = ["compressed", "compressed_j2k", "compressed_jpeg", "compressed_jpegls", "compressed_rle"]
    reference = None
    syntaxes = set()
    for name in variants:
        frames, pixels = _series(root / name / "001")
        syntaxes.add(frames[0].transfer_syntax_uid)
        if reference is None:
            reference = pixels
        np.testing.assert_array_equal(pixels, reference, err_msg=name)
        truth = nib.load(root / name / "001_ground_truth.nii.gz")
        worst, bad = world_mismatch(frames, to_real_values(pixels, frames), truth)
        assert worst < 1e-3 and bad == 0, name
    assert len(syntaxes) == 4  # J2K, JPEG lossless, JPEG-LS, RLE
    for name in ["001", "001_implicit"]:
        frames, pixels = _series(root / "anatomical" / name)
        worst, bad = world_mismatch(frames, pixels, nib.load(root / "anatomical" / f"{name}_ground_truth.nii.gz"))
        assert worst < 1e-3 and bad == 0, name


def test_dicom2nifti_scaled_series_matches_within_tolerance(shared_data):
    root = shared_data / "dicom" / "dicom2nifti" / "generic" / "anatomical"
    frames, pixels = _series(root / "002_non_isotropic")
    real = to_real_values(pixels, frames)
    assert real.dtype == np.float32
    truth = nib.load(root / "002_non_isotropic_ground_truth.nii.gz")
    _, expected = reference_at_frames(frames, truth)
    for k in range(len(frames)):
        np.testing.assert_allclose(real[k], expected[k], rtol=1e-4, atol=1e-3)


def test_rgb_series_matches_ground_truth(shared_data):
    root = shared_data / "dicom" / "dicom2nifti" / "generic" / "rgb"
    frames, pixels = _series(root / "001")
    assert pixels.shape == (4, 77, 52, 3) and pixels.dtype == np.uint8
    truth = nib.load(root / "001_ground_truth.nii.gz")
    rgba = np.asarray(truth.dataobj)
    for channel, name in enumerate("RGB"):
        img = nib.Nifti1Image(np.ascontiguousarray(rgba[name]), truth.affine)
        worst, bad = world_mismatch(frames, pixels[..., channel], img)
        assert worst < 1e-3 and bad == 0, name


def test_pydicom_files_compressed_equal_uncompressed(shared_data):
    files = shared_data / "dicom" / "pydicom_data" / "files"
    groups = [
        ["emri_small.dcm", "emri_small_big_endian.dcm", "emri_small_RLE.dcm",
         "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"],
        ["MR2_UNCR.dcm", "MR2_J2KR.dcm"],
        ["MR2_UNCI.dcm", "MR2_J2KI.dcm"],  # lossy J2K against its own decompressed twin
        ["693_UNCR.dcm", "693_J2KR.dcm"],
    ]
    for names in groups:
        arrays = [load_pixels(read_frames(files / n)) for n in names]
        for name, arr in zip(names[1:], arrays[1:]):
            np.testing.assert_array_equal(arr, arrays[0], err_msg=name)
    big = read_frames(files / "emri_small_big_endian.dcm")
    assert big[0].big_endian and big[0].pixel_offset > 0 and len(big) == 10
    eight_bit = load_pixels(read_frames(files / "JPGLosslessP14SV1_1s_1f_8b.dcm"))
    assert eight_bit.dtype == np.uint8 and eight_bit.shape == (1, 768, 1024) and eight_bit.max() > 200


def test_partial_multiframe_load_and_order(shared_data):
    path = shared_data / "dicom" / "pydicom_data" / "files" / "emri_small_jpeg_2k_lossless.dcm"
    frames = read_frames(path)
    full = load_pixels(frames)
    picked = load_pixels([frames[7], frames[2], frames[7]])
    np.testing.assert_array_equal(picked, full[[7, 2, 7]])


def test_no_gpl_decoder_is_ever_chosen():
    for ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
               "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"):
        assert "pylibjpeg" not in decode.allowed_plugins(ts)
    assert decode.allowed_plugins("1.2.840.10008.1.2.4.90")  # openjpeg or gdcm available
    assert decode.allowed_plugins("1.2.840.10008.1.2.4.70") == ["gdcm"]


# ------------------------------------------------------------------------------------ synthetic


def write_image(path: Path, pixels: np.ndarray, *, bits_stored: int | None = None, signed: bool = False,
                syntax=ExplicitVRLittleEndian, preamble: bool = True, slope: float | None = None,
                intercept: float | None = None, encapsulated: bytes | None = None) -> Path:
    ds = new_dicom_dataset("1.2.840.10008.5.1.4.1.1.2", transfer_syntax=syntax)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    if encapsulated is not None:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=preamble, little_endian=True, implicit_vr=False)
    return path


def test_stray_high_bits_are_masked(tmp_path):
    raw = np.array([[0xF123, 0x0FFF], [0x1000, 0x0001]], dtype=np.uint16)
    frames = read_frames(write_image(tmp_path / "u.dcm", raw, bits_stored=12))
    np.testing.assert_array_equal(load_pixels(frames)[0], [[0x0123, 0x0FFF], [0x0000, 0x0001]])


def test_signed_values_are_sign_extended(tmp_path):
    # 12-bit two's complement stored without sign extension: 0x0FFF is -1, 0x0800 is -2048.
    raw = np.array([[0x0FFF, 0x0800], [0x07FF, 0xF005]], dtype=np.uint16).view(np.int16)
    frames = read_frames(write_image(tmp_path / "s.dcm", raw, bits_stored=12, signed=True))
    out = load_pixels(frames)
    assert out.dtype == np.int16
    np.testing.assert_array_equal(out[0], [[-1, -2048], [2047, 5]])


def test_no_preamble_reads_and_decodes(tmp_path):
    raw = np.arange(12, dtype=np.int16).reshape(3, 4)
    path = write_image(tmp_path / "np.dcm", raw, preamble=False, signed=True)
    assert path.read_bytes()[128:132] != b"DICM"
    np.testing.assert_array_equal(load_pixels(read_frames(path))[0], raw)


def test_rescale_keeps_int16_for_hounsfield(tmp_path):
    raw = np.array([[0, 1024], [2000, 4095]], dtype=np.uint16)
    frames = read_frames(write_image(tmp_path / "ct.dcm", raw, slope=1.0, intercept=-1024.0))
    real = to_real_values(load_pixels(frames), frames)
    assert real.dtype == np.int16
    np.testing.assert_array_equal(real[0], [[-1024, 0], [976, 3071]])


def test_rescale_in_place_only_when_the_stored_type_holds_the_result(tmp_path):
    signed = np.array([[0, 1024], [2000, 3000]], dtype=np.int16)
    frames = read_frames(write_image(tmp_path / "s.dcm", signed, slope=1.0, intercept=-1024.0, signed=True))
    pixels = load_pixels(frames)
    real = to_real_values(pixels, frames, in_place=True)
    assert real is pixels and real.dtype == np.int16  # no second 256 MB buffer for a CT series
    np.testing.assert_array_equal(real[0], [[-1024, 0], [976, 1976]])
    unsigned = np.array([[0, 1024]], dtype=np.uint16)
    frames = read_frames(write_image(tmp_path / "u.dcm", unsigned, slope=1.0, intercept=-1024.0))
    pixels = load_pixels(frames)
    real = to_real_values(pixels, frames, in_place=True)  # negative results do not fit uint16
    assert real is not pixels and real.dtype == np.int16 and pixels[0, 0, 1] == 1024


def test_rescale_float32_when_slope_varies(tmp_path):
    raw = np.array([[10, 20]], dtype=np.uint16)
    f1 = read_frames(write_image(tmp_path / "a.dcm", raw, slope=2.0, intercept=0.0))
    f2 = read_frames(write_image(tmp_path / "b.dcm", raw, slope=0.5, intercept=1.5))
    frames = f1 + f2
    real = to_real_values(load_pixels(frames), frames)
    assert real.dtype == np.float32
    np.testing.assert_allclose(real[:, 0], [[20, 40], [6.5, 11.5]])
    same = to_real_values(load_pixels(f1 + f1), f1 + f1)
    assert same.dtype == np.float32 and same[0, 0, 1] == 40
    ints = to_real_values(load_pixels(f1[:1]), [f1[0].__class__(**{**f1[0].__dict__, "slope": 1.0})])
    assert ints.dtype == np.uint16


def test_truncated_pixels_refused_at_header_time(tmp_path):
    raw = np.ones((64, 64), dtype=np.uint16)
    path = write_image(tmp_path / "t.dcm", raw)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(UnsupportedDicomError) as err:
        read_frames(path)
    assert err.value.code == "truncated" and str(path) in str(err.value)


def test_file_truncated_after_scan_gives_decode_error(tmp_path):
    raw = np.ones((64, 64), dtype=np.uint16)
    path = write_image(tmp_path / "t2.dcm", raw)
    frames = read_frames(path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DecodeError) as err:
        load_pixels(frames)
    assert err.value.code == "truncated" and err.value.path == path


def test_corrupt_compressed_data_names_file_and_syntax(tmp_path):
    raw = np.zeros((8, 8), dtype=np.uint16)
    path = write_image(tmp_path / "bad.dcm", raw, syntax="1.2.840.10008.1.2.4.90", encapsulated=b"\x00" * 64)
    frames = read_frames(path)
    with pytest.raises(DecodeError) as err:
        load_pixels(frames)
    assert err.value.code == "decode_failed"
    assert "bad.dcm" in str(err.value) and "JPEG 2000" in str(err.value)


def test_missing_decoder_names_transfer_syntax(tmp_path):
    raw = np.zeros((8, 8), dtype=np.uint16)
    path = write_image(
        tmp_path / "jxl.dcm", raw, syntax="1.3.6.1.4.1.99999.77.1", encapsulated=b"\xff\x0a" + b"\x00" * 30
    )
    frames = read_frames(path)
    with pytest.raises(DecodeError) as err:
        load_pixels(frames)
    assert err.value.code == "no_decoder"
    assert "1.3.6.1.4.1.99999.77.1" in str(err.value) and "jxl.dcm" in str(err.value)


def test_non_dicom_and_empty_files(tmp_path):
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("this is not an image\n" * 20)
    with pytest.raises(NotDicomError) as err:
        read_frames(empty)
    assert err.value.code == "empty_file"
    with pytest.raises(NotDicomError) as err:
        read_frames(text)
    assert err.value.code == "not_dicom" and "notes.txt" in str(err.value)


def test_mixed_frame_sizes_refused(tmp_path):
    a = read_frames(write_image(tmp_path / "a.dcm", np.zeros((4, 4), np.uint16)))
    b = read_frames(write_image(tmp_path / "b.dcm", np.zeros((4, 5), np.uint16)))
    with pytest.raises(ValueError, match="split the series"):
        load_pixels(a + b)


def test_deflated_syntax(tmp_path):
    raw = (np.arange(64, dtype=np.uint16) * 7).reshape(8, 8)
    path = write_image(tmp_path / "deflated.dcm", raw, syntax="1.2.840.10008.1.2.1.99")
    frames = read_frames(path)
    assert frames[0].transfer_syntax_uid == "1.2.840.10008.1.2.1.99" and frames[0].pixel_offset == -1
    assert frames[0].ipp == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(load_pixels(frames)[0], raw)


def test_given_dataset_is_used(tmp_path):
    raw = np.arange(20, dtype=np.uint16).reshape(4, 5)
    path = write_image(tmp_path / "given.dcm", raw, slope=2.0, intercept=1.0)
    frames = read_frames(path, ds=pydicom.dcmread(path))
    assert frames[0].pixel_offset == -1 and frames[0].slope == 2.0
    np.testing.assert_array_equal(load_pixels(frames)[0], raw)
    fast = read_frames(path)
    assert frames == fast and fast[0].pixel_offset > 0  # the offset is a storage detail, not identity
