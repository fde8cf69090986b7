"""Explicit randomness: same (seed, epoch, index) -> same sample; replaying recorded ops
reproduces it; one draw per sample for all keys; multi-sample crops and cached label indices."""

from __future__ import annotations

import json

import torch
from transform_cases import labelled

from medcore.io import Image
from medcore.transforms import (
    Compose,
    CropForeground,
    ForegroundIndices,
    Keyed,
    LabelIndices,
    OneOf,
    Orientation,
    RandAdjustContrast,
    RandAffine,
    RandBiasField,
    RandCropByLabelClasses,
    RandCropByPosNegLabel,
    RandElastic,
    RandFlip,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandomOrder,
    RandRotate90,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSpatialCrop,
    ScaleIntensityRange,
    Spacing,
    compute_label_indices,
    make_rng,
    replay,
)


def chain() -> Compose:
    return Compose([
        Keyed(Orientation("RAS")),
        Keyed(Spacing((1.2, 1.2, 1.5)), mode=("bilinear", "nearest")),
        Keyed(ScaleIntensityRange(0, 100, 0, 1, clip=True), keys="image"),
        Keyed(CropForeground(source="label", margin=4)),
        ForegroundIndices("label"),
        Keyed(RandCropByPosNegLabel((8, 8, 6), pos=1, neg=1, num_samples=3)),
        Keyed(RandFlip(prob=0.5)),
        Keyed(RandRotate90(prob=0.5, axes=(0, 1))),
        Keyed(RandAffine(prob=0.7, rotate_range=0.2, scale_range=0.1, shear_range=0.05, translate_range=1),
              mode=("bilinear", "nearest")),
        Keyed(RandShiftIntensity(0.1, prob=0.8), keys="image"),
        Keyed(RandScaleIntensity(0.1, prob=0.8), keys="image"),
        Keyed(RandGaussianNoise(prob=0.8, std=0.05), keys="image"),
        Keyed(RandGaussianSmooth(prob=0.5), keys="image"),
        Keyed(RandAdjustContrast(prob=0.5, gamma=(0.7, 1.5)), keys="image"),
        Keyed(RandBiasField(prob=0.5), keys="image"),
    ])


def test_make_rng_is_deterministic_and_distinct():
    a = torch.rand(4, generator=make_rng(1, 2, 3))
    assert torch.equal(a, torch.rand(4, generator=make_rng(1, 2, 3)))
    assert not torch.equal(a, torch.rand(4, generator=make_rng(1, 2, 4)))
    assert not torch.equal(a, torch.rand(4, generator=make_rng(1, 3, 3)))


def test_same_seed_same_samples_and_replay():
    d = labelled()
    c = chain()
    s1 = c(d, make_rng(7, 0, 5))
    s2 = c(d, make_rng(7, 0, 5))
    s3 = c(d, make_rng(7, 1, 5))
    assert isinstance(s1, list) and len(s1) == 3
    for a, b in zip(s1, s2, strict=True):
        assert torch.equal(a["image"].data, b["image"].data) and torch.equal(a["label"].data, b["label"].data)
    assert any(not torch.equal(a["image"].data, b["image"].data) for a, b in zip(s1, s3, strict=True))
    for sample in s1:
        json.dumps(sample["image"].ops)  # ops are JSON
        for k in ("image", "label"):
            again = replay(d[k], sample[k].ops)
            assert torch.equal(again.data, sample[k].data)
            assert torch.equal(again.affine, sample[k].affine)
        assert sample["id"] == "case0"
        assert "label_indices" not in sample  # stale indices are dropped after cropping


def test_keys_share_one_draw():
    d = labelled()
    d["label2"] = d["label"]
    out = Keyed(RandAffine(prob=1.0, rotate_range=0.5), keys=("label", "label2"), mode="nearest")(d, make_rng(0))
    assert torch.equal(out["label"].data, out["label2"].data)
    assert out["label"].ops[-1]["transform"] == out["label2"].ops[-1]["transform"]


def test_crop_centres_follow_labels():
    d = labelled()
    pos = Keyed(RandCropByPosNegLabel((5, 5, 5), pos=1, neg=0, num_samples=8))(d, make_rng(1))
    assert all(s["label"].data[0, 2, 2, 2] > 0 for s in pos)
    neg = Keyed(RandCropByPosNegLabel((5, 5, 5), pos=0, neg=1, num_samples=8))(d, make_rng(1))
    assert all(s["label"].data[0, 2, 2, 2] == 0 for s in neg)
    cls2 = Keyed(RandCropByLabelClasses((5, 5, 5), num_classes=3, ratios=(0, 0, 1), num_samples=4))(d, make_rng(2))
    assert all(s["label"].data[0, 2, 2, 2] == 2 for s in cls2)
    assert all(s["image"].spatial_shape == (5, 5, 5) for s in cls2)
    crops = RandSpatialCrop((6, 7, 8), num_samples=2)(d["image"], make_rng(0))
    assert [c.spatial_shape for c in crops] == [(6, 7, 8)] * 2


def test_label_indices_cached_and_serialisable():
    d = labelled()
    pre = ForegroundIndices("label")(d)
    idx = pre["label_indices"]
    assert isinstance(idx, LabelIndices) and idx.valid_for(pre["label"])
    flat = d["label"].data.reshape(-1)
    assert torch.equal(torch.sort(idx.classes[2]).values, torch.nonzero(flat == 2).flatten())
    back = LabelIndices.from_tensors(idx.to_tensors())
    assert back.shape == idx.shape and all(torch.equal(back.classes[c], idx.classes[c]) for c in idx.classes)
    # the cached indices are used: a poisoned cache (only class-1 voxels as "foreground") steers crops
    poisoned = LabelIndices(idx.shape, idx.n_ops, {1: idx.classes[1]})
    pre["label_indices"] = poisoned
    out = Keyed(RandCropByPosNegLabel((3, 3, 3), pos=1, neg=0, num_samples=6))(pre, make_rng(0))
    assert all(s["label"].data[0, 1, 1, 1] == 1 for s in out)
    fresh = compute_label_indices(d["label"])
    assert fresh.classes.keys() == {1, 2} and fresh.classes[1].dtype == torch.int32
    assert fresh.count(0) == int((d["label"].data == 0).sum()) and fresh.nbytes() < d["label"].data.numel()


def test_oneof_randomorder_elastic_deterministic():
    d = labelled()
    t = Compose(
        [
            OneOf([Keyed(RandFlip(prob=1.0)), Keyed(RandRotate90(prob=1.0))], weights=[1, 3]),
            RandomOrder(
                [
                    Keyed(RandShiftIntensity(0.5, prob=1.0), keys="image"),
                    Keyed(RandScaleIntensity(0.5, prob=1.0), keys="image"),
                ]
            ),
            Keyed(RandElastic(prob=1.0, sigma_range=(2, 3), magnitude_range=(1, 2)), mode=("bilinear", "nearest")),
        ]
    )
    a, b = t(d, make_rng(4)), t(d, make_rng(4))
    assert torch.equal(a["image"].data, b["image"].data) and torch.equal(a["label"].data, b["label"].data)
    assert torch.equal(replay(d["image"], a["image"].ops).data, a["image"].data)
    assert set(torch.unique(a["label"].data).tolist()) <= {0, 1, 2}


def test_image_input_and_prob_zero():
    img = labelled()["image"]
    assert RandFlip(prob=0.0)(img, make_rng(0)) is img
    out = RandFlip(prob=1.0, axes=(1,))(img, make_rng(0))
    assert torch.equal(out.data, img.data.flip(2))
    assert isinstance(RandFlip(prob=1.0)(img), Image)  # rng=None still works (fresh OS seed)
