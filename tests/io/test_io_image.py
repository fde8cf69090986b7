"""Image carrier and I/O: NIfTI against nibabel, NRRD against SimpleITK, real hippocampus data."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import torch

from medcore.io import Image, load_image, save_image


def _affine():
    """Oblique, anisotropic, no shear (so the qform can hold it exactly too)."""
    c, s = np.cos(0.2), np.sin(0.2)
    rot = np.array([[0.0, -c, s], [1.0, 0.0, 0.0], [0.0, s, c]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.9, 1.2, 2.5])
    a[:3, 3] = [30.0, -20.0, 5.0]
    return a


def test_image_basics():
    img = Image(torch.zeros(2, 4, 5, 6), _affine())
    assert img.affine.dtype == torch.float64 and img.affine.shape == (4, 4)
    assert img.spatial_shape == (4, 5, 6) and img.ndim == 3
    np.testing.assert_allclose(img.spacing, np.linalg.norm(_affine()[:3, :3], axis=0))
    other = img.replace(data=torch.ones(2, 4, 5, 6))
    other.meta["x"] = 1
    other.ops.append({"name": "t"})
    assert img.meta == {} and img.ops == [] and float(img.data.sum()) == 0
    img2d = Image(torch.zeros(1, 3, 4), np.array([[2.0, 0, 1], [0, 3.0, 2], [0, 0, 1]]))
    assert img2d.spacing == (2.0, 3.0) and float(img2d.affine[1, 3]) == 2.0
    with pytest.raises(ValueError, match="channel"):
        Image(torch.zeros(5))


@pytest.mark.parametrize("shape", [(1, 7, 6, 5), (3, 7, 6, 5), (1, 8, 9)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8])
def test_nifti_round_trip(tmp_path, shape, dtype):
    data = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)
    img = Image(data, _affine())
    path = save_image(img, tmp_path / "x.nii.gz")
    back = load_image(path)
    assert back.data.dtype == dtype and torch.equal(back.data, data)
    np.testing.assert_allclose(back.affine.numpy(), _affine(), atol=1e-5)
    nii = nib.load(str(path))
    assert int(nii.header["qform_code"]) == 1 and int(nii.header["sform_code"]) == 1
    np.testing.assert_allclose(nii.get_qform(), _affine(), atol=1e-5)
    arr = np.asanyarray(nii.dataobj)
    expected = data.numpy()[0] if shape[0] == 1 else np.moveaxis(data.numpy(), 0, -1)
    np.testing.assert_array_equal(arr, expected)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic: no temp files left


def test_bad_files_name_the_file(tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(ValueError, match="broken.nii.gz"):
        load_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.nii"):
        load_image(tmp_path / "missing.nii")
    with pytest.raises(ValueError, match="unknown image format"):
        (tmp_path / "x.png").write_bytes(b"x")
        load_image(tmp_path / "x.png")
    with pytest.raises(ValueError, match="suffix"):
        save_image(Image(torch.zeros(1, 2, 2, 2)), tmp_path / "x.img")


def test_nrrd_against_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    arr = (np.random.default_rng(0).random((5, 6, 7)) * 1000).astype(np.int16)  # (z, y, x) in ITK order
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing((0.8, 1.1, 2.5))
    im.SetOrigin((10.0, -20.0, 30.0))
    c, s = np.cos(0.3), np.sin(0.3)
    im.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
    for name, compress in (("a.nrrd", True), ("b.nrrd", False)):
        sitk.WriteImage(im, str(tmp_path / name), compress)
        img = load_image(tmp_path / name)
        assert img.spatial_shape == (7, 6, 5)
        assert np.array_equal(img.data[0].numpy(), arr.transpose(2, 1, 0))
        # world (RAS) of voxel (i, j, k) == ITK's LPS point with x, y negated
        for idx in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
            lps = np.array(im.TransformIndexToPhysicalPoint(idx))
            ras = img.affine.numpy() @ np.array([*idx, 1.0])
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-6)


def test_hippocampus_matches_nibabel(shared_data, tmp_path):
    folder = shared_data / "hippocampus"
    for name in ("hippocampus_001.nii.gz", "hippocampus_003.nii.gz"):
        for sub in ("imagesTr", "labelsTr"):
            p = folder / sub / name
            if not p.exists():
                continue
            img = load_image(p)
            nii = nib.load(str(p))
            ref = np.asanyarray(nii.dataobj)
            assert img.spatial_shape == ref.shape
            np.testing.assert_allclose(img.data[0].numpy(), ref.astype(np.float32) if ref.dtype == np.float64 else ref)
            np.testing.assert_allclose(img.affine.numpy(), nii.affine)
            assert "filename" not in img.meta  # no paths (possible PHI) in meta
            back = load_image(save_image(img, tmp_path / f"{sub}.nii.gz"))
            assert torch.equal(back.data, img.data)


def test_dicom_series_matches_ground_truth(shared_data):
    """A DICOM series folder loads through medcore.dicom and lands on the same world grid as
    dicom2nifti's ground truth (compared after bringing both to RAS)."""
    dicom = pytest.importorskip("medcore.dicom")
    folder = shared_data / "dicom" / "dicom2nifti" / "anatomical"
    truth = folder / "001_ground_truth.nii.gz"
    if not (folder / "001").is_dir() or not truth.exists():
        pytest.skip("anatomical DICOM sample not present")
    try:
        dicom.load_series  # noqa: B018
    except AttributeError:
        pytest.skip("medcore.dicom.load_series is not available yet")
    from medcore.data import load_volume
    from medcore.transforms import Orientation

    img = load_volume(folder / "001")
    assert img.meta["source_format"] == "dicom" and img.data.is_contiguous()
    ref = load_image(truth)
    a, b = Orientation("RAS")(img), Orientation("RAS")(ref)
    assert a.spatial_shape == b.spatial_shape
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-3)
    np.testing.assert_allclose(a.data.float().numpy(), b.data.float().numpy(), atol=1e-3)
