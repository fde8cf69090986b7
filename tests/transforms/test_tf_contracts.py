"""Contracts: transforms are immutable and typed, configs stay valid, draws have one home."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from transform_cases import labelled

from medcore.transforms import (
    REGISTRY,
    Compose,
    Flip,
    Keyed,
    RandAffine,
    RandFlip,
    Spacing,
    Transform,
    from_config,
    invert,
    make_rng,
)
from medcore.transforms import random as draws


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_transforms_are_frozen_and_typed(name):
    cls = REGISTRY[name]
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name
    hints = typing.get_type_hints(cls)
    untyped = [f.name for f in dataclasses.fields(cls) if hints[f.name] in (object, typing.Any)]
    assert not untyped, f"{name}: fields {untyped} have no real type"


def test_frozen_instance_keeps_its_config():
    t = Spacing(pixdim=[1.0, 2.0, 3.0])
    cfg = t.config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.pixdim = (2.0, 2.0, 2.0)  # type: ignore[misc]
    assert t.pixdim == (1.0, 2.0, 3.0) and t.config() == cfg == {**cfg, "pixdim": [1.0, 2.0, 3.0]}
    assert t.replace(pixdim=(2.0, 2.0, 2.0)).config()["pixdim"] == [2.0, 2.0, 2.0]
    assert hash(t) == hash(Spacing(pixdim=(1.0, 2.0, 3.0)))  # list fields are stored as tuples
    k = Keyed(Flip(), keys=("image",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        k.keys = ("label",)  # type: ignore[misc]
    c = Compose([Flip(), RandFlip()])
    assert isinstance(c.transforms, tuple)


def test_from_config_list_is_a_compose_and_invert_takes_samples():
    pre = from_config([Keyed(Flip()).config(), Keyed(RandAffine(prob=1.0, rotate_range=0.3)).config()])
    assert isinstance(pre, Compose) and len(pre) == 2
    d = labelled()
    out = pre(d, make_rng(1))
    back = invert(out, mode="nearest")
    assert back["label"].spatial_shape == d["label"].spatial_shape and back["id"] == d["id"]
    assert [b["label"].spatial_shape for b in invert([out, out])] == [d["label"].spatial_shape] * 2
    with pytest.raises(TypeError, match="invert expects"):
        invert(torch.zeros(3))


def test_draw_helpers_are_reproducible():
    a, b = make_rng(3, 1, 2), make_rng(3, 1, 2)
    assert [draws.uniform(a, -1, 1), draws.coin(a, 0.5), draws.integer(a, 0, 9), draws.seed(a)] == \
           [draws.uniform(b, -1, 1), draws.coin(b, 0.5), draws.integer(b, 0, 9), draws.seed(b)]
    assert draws.as_range(0.2) == (-0.2, 0.2) and draws.as_range((0.5, 2)) == (0.5, 2.0)
    assert draws.axis_ranges([0.1, (1, 2)], 3) == [(-0.1, 0.1), (1.0, 2.0), (1.0, 2.0)]
    assert draws.axis_ranges(None, 2) == [(0.0, 0.0)] * 2
    assert issubclass(REGISTRY["Compose"], Transform)
