"""Geometry: world positions survive Orientation+Spacing (fused or not); inversion returns the
original grid, affine and (for nearest) voxels; fused == sequential."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transform_cases import labelled, oblique_affine

from medcore.io import Image
from medcore.transforms import (
    CenterSpatialCrop,
    Compose,
    CropForeground,
    Flip,
    Keyed,
    Orientation,
    RandAffine,
    RandFlip,
    RandRotate90,
    Rotate,
    Rotate90,
    Spacing,
    SpatialPad,
    invert,
    make_rng,
)

COEF = np.array([0.7, -1.3, 2.1])


def linear_world_volume(shape=(22, 18, 12)) -> Image:
    """Intensity = COEF . world(x) + 5: linear interpolation reproduces it exactly."""
    a = oblique_affine()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ a[:3, :3].T + a[:3, 3]
    vals = (world @ COEF + 5.0).reshape(shape)
    return Image(torch.from_numpy(vals)[None], torch.from_numpy(a))  # float64 to isolate geometry


def world_values(img: Image) -> np.ndarray:
    shape = img.spatial_shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    a = img.affine.numpy()
    return ((idx @ a[:3, :3].T + a[:3, 3]) @ COEF + 5.0).reshape(shape)


def interior(img: Image, src: Image, ops_map) -> np.ndarray:
    """Mask of output voxels whose sample point lies inside the input grid (no edge padding)."""
    shape = img.spatial_shape
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    m = np.asarray(ops_map)
    src_idx = idx @ m[:3, :3].T + m[:3, 3]
    n = np.asarray(src.spatial_shape)
    return np.all((src_idx >= -1e-6) & (src_idx <= n - 1 + 1e-6), axis=1).reshape(shape)


@pytest.mark.parametrize("fuse", [True, False])
@pytest.mark.parametrize("pixdim", [(1.5, 1.5, 2.0), (0.8, 1.7, 1.1)])
def test_orientation_spacing_keeps_world_points(fuse, pixdim):
    src = linear_world_volume()
    out = Compose([Orientation("RAS"), Spacing(pixdim)], fuse=fuse)(src)
    assert np.allclose(out.spacing, pixdim)
    # voxel axes now point along +R, +A, +S
    assert np.all(np.argmax(np.abs(out.affine.numpy()[:3, :3]), axis=0) == [0, 1, 2])
    assert np.all(np.diag(out.affine.numpy()[:3, :3]) > 0)
    # the composed voxel map (output -> input) from the recorded ops
    m = np.eye(4)
    for op in out.ops:
        m = m @ np.asarray(op["matrix"])
    np.testing.assert_allclose(out.affine.numpy(), src.affine.numpy() @ m, atol=1e-9)
    inside = interior(out, src, m)
    assert inside.mean() > 0.5
    got = out.data[0].numpy()
    np.testing.assert_allclose(got[inside], world_values(out)[inside], atol=1e-6)
    assert len(out.ops) == (1 if fuse else 2)


def test_fused_equals_sequential():
    d = labelled()
    steps = [Keyed(Orientation("RAS")), Keyed(Spacing((1.1, 0.9, 1.7)), mode=("bilinear", "nearest")),
             Keyed(Rotate((0.1, 0.0, 0.2))), Keyed(Flip((1,)))]
    a = Compose(steps, fuse=True)(d)
    b = Compose(steps, fuse=False)(d)
    assert len(a["image"].ops) == 1 and a["image"].ops[0]["fused"]
    assert len(b["image"].ops) == 4
    for k in ("image", "label"):
        assert a[k].data.shape == b[k].data.shape
        np.testing.assert_allclose(a[k].affine.numpy(), b[k].affine.numpy(), atol=1e-9)
    assert a["label"].data.dtype == d["label"].data.dtype
    # one interpolation instead of three: close to the sequential result, not identical
    diff = (a["image"].data - b["image"].data).abs()
    assert diff.median() < 5.0
    # labels: one nearest lookup; agree with sequential on the vast majority of voxels
    assert (a["label"].data == b["label"].data).float().mean() > 0.9


def test_invert_roundtrip_nearest_exact():
    d = labelled()
    half = tuple(s / 2 for s in d["image"].spacing)
    pre = Compose([
        Keyed(Orientation("RAS")),
        Keyed(Spacing(half), mode=("bilinear", "nearest")),
        Keyed(Flip((0, 2))),
        Keyed(Rotate90(k=1, axes=(0, 2))),
        Keyed(SpatialPad((60, 60, 60))),
        Keyed(CropForeground(source="label", margin=2)),
        Keyed(CenterSpatialCrop((40, 40, 40))),
    ])
    out = pre(d)
    lab = out["label"]
    assert lab.spatial_shape != d["label"].spatial_shape
    back = invert(lab, mode="nearest")
    assert back.spatial_shape == d["label"].spatial_shape
    np.testing.assert_allclose(back.affine.numpy(), d["label"].affine.numpy(), atol=1e-9)
    assert torch.equal(back.data, d["label"].data)
    # a float prediction made on the preprocessed grid goes back with the image's ops too
    pred = Image(out["label"].data.float(), out["image"].affine)
    back_pred = invert(pred, ops=out["image"].ops, mode="nearest")
    assert torch.equal(back_pred.data.to(torch.uint8), d["label"].data)
    assert invert(out)["label"].spatial_shape == d["label"].spatial_shape


def test_invert_random_affine_restores_grid():
    d = labelled()
    aug = Compose([Keyed(RandAffine(prob=1.0, rotate_range=0.3, scale_range=0.1, translate_range=2),
                         mode=("bilinear", "nearest")), Keyed(RandFlip(prob=1.0)), Keyed(RandRotate90(prob=1.0))])
    out = aug(d, make_rng(3))
    back = invert(out["image"], mode="bilinear")
    np.testing.assert_allclose(back.affine.numpy(), d["image"].affine.numpy(), atol=1e-9)
    assert back.spatial_shape == d["image"].spatial_shape


def test_invert_rejects_wrong_shape():
    d = labelled()
    out = Keyed(Spacing((2.0, 2.0, 2.0)))(d)
    with pytest.raises(ValueError, match="shape"):
        invert(d["image"], ops=out["image"].ops)


def test_2d_orientation_spacing():
    a = np.array([[-0.8, 0, 0, 10], [0, 1.2, 0, -5], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    img = Image(torch.arange(63, dtype=torch.float32).reshape(1, 9, 7), a)
    out = Compose([Orientation("RA"), Spacing((0.4, 0.6))])(img)
    assert out.spatial_shape == (17, 13)
    np.testing.assert_allclose(np.diag(out.affine.numpy())[:2], [0.4, 0.6])
    back = invert(out, mode="bilinear")
    assert back.spatial_shape == (9, 7)
    torch.testing.assert_close(back.data, img.data, atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stays_on_device():
    d = labelled()
    d = {k: (v.to("cuda") if isinstance(v, Image) else v) for k, v in d.items()}
    pre = Compose([Keyed(Orientation("RAS")), Keyed(Spacing((1.5, 1.5, 2.0)), mode=("bilinear", "nearest")),
                   Keyed(Rotate((0.1, 0.2, 0.0)))])
    out = pre(d)
    assert out["image"].data.is_cuda and out["label"].data.is_cuda
    cpu = pre({k: (v.to("cpu") if isinstance(v, Image) else v) for k, v in d.items()})
    torch.testing.assert_close(out["image"].data.cpu(), cpu["image"].data, atol=1e-3, rtol=1e-4)
    assert invert(out["label"]).data.is_cuda


def test_spacing_anti_alias_suppresses_aliasing():
    # a 1-voxel checkerboard along axis 0, downsampled 4x: without a prefilter the samples
    # alias to the raw pattern; with it they approach the local mean (0.5)
    data = (torch.arange(64) % 2).float().reshape(1, 64, 1, 1).expand(1, 64, 4, 4).contiguous()
    img = Image(data, np.eye(4))
    plain = Spacing((4.0, 1.0, 1.0), mode="bilinear")(img).data
    smooth = Spacing((4.0, 1.0, 1.0), mode="bilinear", anti_alias=True)(img).data
    assert (plain[0, 2:-2] - 0.5).abs().max() > 0.4
    assert (smooth[0, 2:-2] - 0.5).abs().max() < 0.1
    assert not Spacing((4.0, 1.0, 1.0), anti_alias=True).fusable and Spacing((4.0, 1.0, 1.0)).fusable
