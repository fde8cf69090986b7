"""Config round trips, the deterministic-prefix split, dict handling and error messages."""

from __future__ import annotations

import json

import pytest
import torch
from transform_cases import labelled

from medcore.io import Image
from medcore.transforms import (
    REGISTRY,
    Compose,
    CropForeground,
    Flip,
    ForegroundIndices,
    Keyed,
    Orientation,
    RandCropByPosNegLabel,
    RandFlip,
    ScaleIntensityRange,
    Spacing,
    Transform,
    from_config,
    make_rng,
)

NEEDS_ARGS = {
    "Keyed": lambda c: c(Flip()),
    "Compose": lambda c: c([Flip(), RandFlip()]),
    "OneOf": lambda c: c([Flip()]),
    "RandomOrder": lambda c: c([Flip()]),
    "Resample": lambda c: c(matrix=[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], out_shape=[2, 2, 2]),
    "CropPad": lambda c: c((1, 1, 1), (0, 0, 0)),
    "SpatialCrop": lambda c: c((0, 0, 0), (2, 2, 2)),
}


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_transform_round_trips_through_json(name):
    cls = REGISTRY[name]
    t = NEEDS_ARGS.get(name, lambda c: c())(cls)
    cfg = t.config()
    text = json.dumps(cfg)
    again = from_config(json.loads(text))
    assert type(again) is cls
    assert again.config() == cfg
    assert isinstance(t.is_random, bool)


def test_split_deterministic_and_rebuild():
    pre = Compose([Keyed(Orientation("RAS")), Keyed(Spacing((1.5, 1.5, 2.0)), mode=("bilinear", "nearest")),
                   Keyed(ScaleIntensityRange(-57, 164, 0, 1, clip=True), keys="image"),
                   Keyed(CropForeground(source="image")), ForegroundIndices("label"),
                   Keyed(RandCropByPosNegLabel((4, 4, 4), num_samples=2)), Keyed(RandFlip())])
    prefix, rest = pre.split_deterministic()
    assert len(prefix) == 5 and len(rest) == 2
    assert not prefix.is_random and rest.is_random and pre.is_random
    assert from_config(pre.config()) == pre
    assert from_config(json.loads(json.dumps(pre.config()))).config() == pre.config()
    # changing one parameter changes the config (cache keys hash it)
    other = Compose([Keyed(Orientation("RAS")), Keyed(Spacing((1.5, 1.5, 2.5)), mode=("bilinear", "nearest"))])
    assert other.config() != prefix[:2].config()
    d = labelled()
    whole = pre(d, make_rng(0, 0, 0))
    staged = rest(prefix(d), make_rng(0, 0, 0))
    assert len(whole) == len(staged) == 2
    for a, b in zip(whole, staged, strict=True):
        assert torch.equal(a["image"].data, b["image"].data) and torch.equal(a["label"].data, b["label"].data)


def test_dict_passthrough_and_errors():
    d = labelled()
    out = Flip((0,))(d)  # a bare transform on a dict applies to every Image entry
    assert torch.equal(out["label"].data, d["label"].data.flip(1)) and out["id"] == "case0"
    with pytest.raises(KeyError, match="no key"):
        Keyed(Flip(), keys=("image", "mask"))(d)
    assert Keyed(Flip(), keys=("image", "mask"), allow_missing=True)(d)["image"].ops
    with pytest.raises(TypeError, match="not Images"):
        Keyed(Flip(), keys=("image", "id"))(d)
    with pytest.raises(TypeError, match="Image"):
        Flip()(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="unknown transform"):
        from_config({"name": "NoSuchTransform"})
    with pytest.raises(ValueError, match="axcodes"):
        Orientation("RA")(d["image"])
    with pytest.raises(ValueError, match="override"):
        Keyed(Flip(), keys=("image",), mode={"label": "nearest"})


def test_per_key_override_forms():
    d = labelled()
    a = Keyed(Spacing((2.0, 2.0, 2.0)), keys=("image", "label"), mode={"label": "nearest"})(d)
    b = Keyed(Spacing((2.0, 2.0, 2.0)), keys=("image", "label"), mode=("bilinear", "nearest"))(d)
    assert a["label"].data.dtype == torch.uint8 and torch.equal(a["label"].data, b["label"].data)
    assert a["label"].ops[-1]["transform"]["mode"] == "nearest"
    assert a["image"].ops[-1]["transform"]["mode"] == "bilinear"


def test_custom_transform_registers():
    from dataclasses import dataclass

    from medcore.transforms import register

    @register
    @dataclass
    class AddOne(Transform):
        amount: float = 1.0

        def apply(self, img: Image) -> Image:
            return img.with_op(self.op(kind="intensity"), data=img.data + self.amount)

    t = from_config({"name": "AddOne", "amount": 2.0})
    img = labelled()["image"]
    assert torch.allclose(t(img).data, img.data + 2)
    REGISTRY.pop("AddOne")


def test_compose_never_modifies_inputs_in_place():
    from medcore.transforms import RandShiftIntensity, ShiftIntensity

    d = labelled()
    before = d["image"].data.clone()
    t = Compose([Keyed(Flip((0,))), Keyed(ShiftIntensity(5.0), keys="image"),
                 Keyed(RandShiftIntensity(1.0, prob=1.0), keys="image")])
    out = t(d, make_rng(0))
    assert torch.equal(d["image"].data, before)
    shift = out["image"].ops[-1]["transform"]["offset"]
    torch.testing.assert_close(out["image"].data, before.flip(1) + 5.0 + shift)
    # a chain that starts with an intensity op must copy (the input is the caller's)
    out2 = Compose([Keyed(ShiftIntensity(5.0), keys="image")])(d)
    assert torch.equal(d["image"].data, before) and torch.allclose(out2["image"].data, before + 5)


def test_in_place_scale_range_matches_copying_path():
    d = labelled()
    t = Keyed(ScaleIntensityRange(10, 80, 0, 1, clip=True), keys="image")
    owned = Compose([Keyed(Flip((1,))), t])(d)["image"].data
    copied = t(Keyed(Flip((1,)))(d))["image"].data
    torch.testing.assert_close(owned, copied, atol=1e-6, rtol=1e-6)
