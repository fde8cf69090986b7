"""The transforms added for nnU-Net's augmentation set: MONAI as the oracle, replay, config round
trip, keyed use; and the label-driven crop fused with rotation into one resample."""

from __future__ import annotations

import json

import pytest
import torch
from transform_cases import labelled, volume

from medcore.io import Image
from medcore.transforms import (
    AdjustContrast,
    Compose,
    Keyed,
    RandAdjustContrast,
    RandAffine,
    RandCropByPosNegLabel,
    RandFlip,
    RandScaleIntensityFixedMean,
    RandSimulateLowResolution,
    ScaleIntensityFixedMean,
    SimulateLowResolution,
    from_config,
    make_rng,
    replay,
)

mt = pytest.importorskip("monai.transforms")

RANDOM = [
    RandScaleIntensityFixedMean(prob=1.0, factors=(-0.25, 0.25)),
    RandSimulateLowResolution(prob=1.0, zoom_range=(0.5, 0.9)),
    RandAdjustContrast(prob=1.0, gamma=(0.7, 1.5), invert=True, retain_stats=True),
]


def _close(ours: torch.Tensor, theirs, atol: float = 1e-4) -> None:
    t = torch.as_tensor(theirs.as_tensor() if hasattr(theirs, "as_tensor") else theirs)
    assert ours.shape == t.shape
    torch.testing.assert_close(ours, t.to(ours.dtype), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("factor", [-0.2, 0.3])
def test_contrast_about_the_mean_matches_monai(factor):
    img = volume(channels=2)
    ours = ScaleIntensityFixedMean(factor)(img).data
    _close(ours, mt.ScaleIntensityFixedMean(factor, preserve_range=True, fixed_mean=True, channel_wise=True)(img.data))
    assert ours.min() >= img.data.min() and ours.max() <= img.data.max()


@pytest.mark.parametrize("zoom", [0.5, 0.73])
def test_low_resolution_matches_monai(zoom):
    img = volume()
    theirs = mt.RandSimulateLowResolution(prob=1.0, zoom_range=(zoom, zoom))(img.data)
    ours = SimulateLowResolution(zoom)(img)
    _close(ours.data, theirs)
    assert ours.spatial_shape == img.spatial_shape and torch.equal(ours.affine, img.affine)


@pytest.mark.parametrize(("invert", "retain"), [(False, False), (True, False), (False, True), (True, True)])
def test_gamma_plain_and_inverted_match_monai(invert, retain):
    img = volume()
    theirs = mt.AdjustContrast(1.4, invert_image=invert, retain_stats=retain)(img.data)
    _close(AdjustContrast(1.4, invert=invert, retain_stats=retain)(img).data, theirs, atol=2e-3)


@pytest.mark.parametrize("t", RANDOM, ids=lambda t: type(t).__name__)
def test_random_versions_replay_round_trip_and_keyed(t):
    d = labelled()
    out = Keyed(t, keys="image")(d, make_rng(5, 1, 2))
    assert torch.equal(out["label"].data, d["label"].data) and len(out["label"].ops) == len(d["label"].ops)
    assert not torch.equal(out["image"].data, d["image"].data)
    again = Keyed(t, keys="image")(d, make_rng(5, 1, 2))
    assert torch.equal(again["image"].data, out["image"].data)
    assert torch.equal(replay(d["image"], out["image"].ops[len(d["image"].ops):]).data, out["image"].data)
    rebuilt = from_config(json.loads(json.dumps(t.config())))
    assert rebuilt == t and rebuilt.config() == t.config()
    assert type(t)(prob=0.0)(d["image"], make_rng(0)) is d["image"]


def test_fused_crop_samples_the_volume_once():
    d = {**labelled(), "id": "case0"}
    roi = (10, 12, 8)
    crop = Keyed(RandCropByPosNegLabel(roi, pos=1.0, neg=0.0, fuse=True))
    plain_crop = Keyed(RandCropByPosNegLabel(roi, pos=1.0, neg=0.0))
    still = Keyed(RandAffine(prob=1.0, rotate_range=0.0), mode=("bilinear", "nearest"))
    fused = Compose([crop, still, Keyed(RandFlip(prob=0.0))])(d, make_rng(3))
    assert [o["name"] for o in fused["image"].ops] == ["Resample"] and fused["image"].spatial_shape == roi
    unfused = Compose([plain_crop])(d, make_rng(3))
    assert torch.allclose(fused["image"].data, unfused["image"].data, atol=1e-4)
    assert torch.equal(fused["label"].data, unfused["label"].data) and (fused["label"].data > 0).any()
    turned = Compose([crop, Keyed(RandAffine(prob=1.0, rotate_range=0.5), mode=("bilinear", "nearest"))])(
        d, make_rng(3))
    assert len(turned["image"].ops) == 1 and turned["image"].ops[0]["fused"][1]["name"] == "Affine"
    assert set(turned["label"].data.unique().tolist()) <= {0, 1, 2} and turned["label"].data.dtype == torch.uint8
    # rotation samples outside the crop box (from the whole volume): no zero border where the volume has data
    alone = Compose([plain_crop, Keyed(RandAffine(prob=1.0, rotate_range=0.5), mode=("bilinear", "nearest"))],
                    fuse=False)(d, make_rng(3))
    assert (turned["image"].data == 0).sum() < (alone["image"].data == 0).sum()
    assert torch.equal(replay(Image(d["image"].data, d["image"].affine), turned["image"].ops).data,
                       turned["image"].data)
