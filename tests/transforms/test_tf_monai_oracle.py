"""Deterministic transforms against MONAI 1.6.1 (the oracle): exact for integer-grid operations,
within interpolation tolerance for resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transform_cases import labelled, volume

from medcore.io import Image
from medcore.transforms import (
    AdjustContrast,
    Affine,
    CenterSpatialCrop,
    Clip,
    CropForeground,
    DivisiblePad,
    Flip,
    NormalizeIntensity,
    Orientation,
    Resize,
    Rotate,
    Rotate90,
    ScaleIntensityRange,
    Spacing,
    SpatialCrop,
    SpatialPad,
    Zoom,
)

monai = pytest.importorskip("monai")
mt = pytest.importorskip("monai.transforms")
from monai.data import MetaTensor  # noqa: E402


def _meta(img: Image) -> MetaTensor:
    return MetaTensor(img.data.clone(), affine=img.affine.clone())


def _check(ours: Image, theirs, exact: bool, atol: float = 1e-4, affine_atol: float = 1e-9) -> None:
    t = theirs.as_tensor()
    assert tuple(ours.data.shape) == tuple(t.shape)
    if exact:
        assert torch.equal(ours.data.to(t.dtype), t)
    else:
        torch.testing.assert_close(ours.data.to(t.dtype), t, atol=atol, rtol=1e-5)
    np.testing.assert_allclose(ours.affine.numpy(), theirs.affine.numpy(), atol=affine_atol)


@pytest.fixture(scope="module")
def img() -> Image:
    return volume()


@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 2), (0, 1, 2)])
def test_flip(img, axes):
    _check(Flip(axes=axes)(img), mt.Flip(spatial_axis=axes)(_meta(img)), exact=True)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("axes", [(0, 1), (0, 2), (1, 2)])
def test_rotate90(img, k, axes):
    _check(Rotate90(k=k, axes=axes)(img), mt.Rotate90(k=k, spatial_axes=axes)(_meta(img)), exact=True)


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIR", "SAL", "ILA"])
def test_orientation(img, codes):
    _check(Orientation(codes)(img), mt.Orientation(axcodes=codes)(_meta(img)), exact=True)


def test_orientation_2d():
    a = np.diag([-0.8, 1.2, 1.0, 1.0])
    img = Image(torch.rand(2, 9, 7, generator=torch.Generator().manual_seed(1)), a)
    _check(Orientation("RA")(img), mt.Orientation(axcodes="RA")(_meta(img)), exact=True)


def test_crops_and_pads(img):
    m = _meta(img)
    _check(SpatialCrop((2, 3, 1), (15, 12, 9))(img), mt.SpatialCrop(roi_start=(2, 3, 1), roi_end=(15, 12, 9))(m), True)
    for size in [(9, 8, 5), (10, 7, 6), (11, 40, -1)]:
        _check(CenterSpatialCrop(size)(img), mt.CenterSpatialCrop(size)(m), True)
    for size in [(25, 20, 14), (21, 17, 12), (-1, 30, 11)]:
        _check(SpatialPad(size)(img), mt.SpatialPad(size)(m), True)
    for k in [8, (3, 5, 7)]:
        _check(DivisiblePad(k)(img), mt.DivisiblePad(k)(m), True)


def test_crop_foreground():
    d = labelled()
    lab = d["label"]
    for margin in (0, 2):
        _check(CropForeground(margin=margin)(lab), mt.CropForeground(margin=margin)(_meta(lab)), True)
    ours = CropForeground(source="label", margin=1)(d)
    theirs = mt.CropForegroundd(keys=["image", "label"], source_key="label", margin=1)(
        {"image": _meta(d["image"]), "label": _meta(d["label"])})
    _check(ours["image"], theirs["image"], True)
    _check(ours["label"], theirs["label"], True)


@pytest.mark.parametrize("pixdim", [(1.5, 1.5, 2.0), (0.7, 1.1, 3.0)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("oriented", [True, False])
def test_spacing(img, pixdim, mode, oriented):
    src = Orientation("RAS")(img) if oriented else img
    ms = mt.Orientation(axcodes="RAS")(_meta(img)) if oriented else _meta(img)
    _check(Spacing(pixdim, mode=mode)(src), mt.Spacing(pixdim=pixdim, mode=mode)(ms), exact=False, atol=1e-3)


def test_resize(img):
    _check(Resize((30, 10, 7))(img), mt.Resize((30, 10, 7), mode="trilinear")(_meta(img)), exact=False, atol=1e-3)


def test_rotate_zoom_affine():
    g = torch.Generator().manual_seed(0)
    img2 = Image(torch.rand(1, 20, 16, generator=g))
    for keep in (True, False):
        _check(Rotate(0.3, keep_size=keep)(img2),
               mt.Rotate(0.3, keep_size=keep, padding_mode="zeros", align_corners=True)(_meta(img2)), False, 1e-4)
    _check(Zoom(1.5)(img2), mt.Zoom(1.5, mode="bilinear")(_meta(img2)), False, 1e-4)
    img3 = volume()
    _check(Rotate((0.2, -0.3, 0.4))(img3),
           mt.Rotate((0.2, -0.3, 0.4), padding_mode="zeros", align_corners=True)(_meta(img3)), False, 1e-2, 1e-6)
    ours = Affine(
        rotate=(0.1, 0.2, 0.3), shear=(0.1, 0, 0.05, 0, 0, -0.1), scale=(1.1, 0.9, 1.2), translate=(2, -1, 0.5)
    )(img3)
    theirs = mt.Affine(
        rotate_params=(0.1, 0.2, 0.3),
        shear_params=(0.1, 0, 0.05, 0, 0, -0.1),
        scale_params=(1.1, 0.9, 1.2),
        translate_params=(2, -1, 0.5),
        padding_mode="zeros",
        image_only=True,
    )(_meta(img3))
    _check(ours, theirs, False, 1e-2, 1e-5)


def test_intensity(img):
    m = _meta(img)
    _check(
        ScaleIntensityRange(10, 80, 0, 1, clip=True)(img),
        mt.ScaleIntensityRange(10, 80, 0, 1, clip=True)(m),
        False,
        1e-6,
    )
    _check(ScaleIntensityRange(5, 95, 0, 1, clip=True, percentiles=True)(img),
           mt.ScaleIntensityRangePercentiles(5, 95, 0, 1, clip=True)(m), False, 1e-5)
    _check(NormalizeIntensity()(img), mt.NormalizeIntensity()(m), False, 1e-5)
    lab = labelled()["label"].replace(data=labelled()["label"].data.float())
    _check(NormalizeIntensity(nonzero=True)(lab), mt.NormalizeIntensity(nonzero=True)(_meta(lab)), False, 1e-5)
    two = Image(torch.cat([img.data, img.data * 3 + 7]), img.affine)
    _check(
        NormalizeIntensity(channel_wise=True)(two), mt.NormalizeIntensity(channel_wise=True)(_meta(two)), False, 1e-5
    )
    _check(AdjustContrast(1.7)(img), mt.AdjustContrast(1.7)(m), False, 1e-4)
    clipped = Clip(20, 60)(img)
    assert torch.equal(clipped.data, img.data.clamp(20, 60)) and clipped.data.min() >= 20
