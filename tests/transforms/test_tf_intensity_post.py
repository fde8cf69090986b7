"""Intensity and post-processing transforms on small hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import torch

from medcore.io import Image
from medcore.transforms import (
    Activations,
    AsDiscrete,
    BiasField,
    FillHoles,
    GaussianNoise,
    GaussianSmooth,
    KeepLargestConnectedComponent,
    RemoveSmallObjects,
    ScaleIntensityRange,
)
from medcore.transforms.functional.intensity import monomials, percentile


def test_percentile_matches_numpy():
    x = torch.randn(1, 17, 13, 5, generator=torch.Generator().manual_seed(0))
    for q in (0, 0.5, 5, 50, 99.5, 100):
        assert abs(float(percentile(x, q)) - np.percentile(x.numpy(), q)) < 1e-5


def test_scale_range_integer_input_gives_float():
    img = Image(torch.tensor([[[-100, 0, 57, 164, 500]]], dtype=torch.int16))
    out = ScaleIntensityRange(-57, 164, 0, 1, clip=True)(img).data
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 57 / 221, 114 / 221, 1.0, 1.0]))


def test_noise_smooth_bias():
    img = Image(torch.ones(1, 16, 16, 8))
    a = GaussianNoise(std=0.5, seed=3)(img).data
    assert torch.equal(a, GaussianNoise(std=0.5, seed=3)(img).data)
    assert 0.4 < float((a - 1).std()) < 0.6
    sm = GaussianSmooth(1.5)(img).data
    torch.testing.assert_close(sm, img.data)  # a constant stays constant (edges replicated)
    impulse = torch.zeros(1, 21)
    impulse[0, 10] = 1
    blurred = GaussianSmooth(2.0)(Image(impulse)).data[0]
    assert abs(float(blurred.sum()) - 1) < 1e-5 and int(blurred.argmax()) == 10
    assert len(monomials(3, 3)) == 20
    flat = BiasField(tuple([0.0] * 20), 3)(img).data
    assert torch.equal(flat, img.data)
    field = BiasField(tuple([0.0, 0.2] + [0.0] * 18), 3)(img).data
    assert float(field.max()) > 1.1 and float(field.min()) < 0.9


def test_activations_asdiscrete():
    logits = torch.tensor([[[2.0, -1.0]], [[0.0, 3.0]]])
    img = Image(logits)
    p = Activations(softmax=True)(img).data
    torch.testing.assert_close(p.sum(0), torch.ones(1, 2))
    arg = AsDiscrete(argmax=True)(img).data
    assert arg.tolist() == [[[0.0, 1.0]]]
    onehot = AsDiscrete(argmax=True, to_onehot=2)(img).data
    assert onehot.tolist() == [[[1.0, 0.0]], [[0.0, 1.0]]]
    assert AsDiscrete(threshold=0.5)(Image(torch.sigmoid(logits))).data.tolist() == [
        [[1.0, 0.0]],
        [[1.0, 1.0]],
    ]  # 0.5 >= 0.5


def test_connected_component_cleanup():
    lab = torch.zeros(1, 12, 12, 12, dtype=torch.uint8)
    lab[0, 1:6, 1:6, 1:6] = 1          # big part of class 1
    lab[0, 9:11, 9:11, 9:11] = 1       # small part of class 1
    lab[0, 8:11, 1:4, 1:4] = 2         # class 2
    lab[0, 3, 3, 3] = 0                # a hole
    img = Image(lab)
    kept = KeepLargestConnectedComponent()(img).data
    assert int((kept == 1).sum()) == 124 and int((kept == 2).sum()) == 27
    removed = RemoveSmallObjects(min_size=20)(img).data
    assert int((removed == 1).sum()) == 124 and int((removed == 2).sum()) == 27
    filled = FillHoles()(img).data
    assert int(filled[0, 3, 3, 3]) == 1 and int((filled == 2).sum()) == 27
    onehot = Image(torch.stack([lab[0] == 0, lab[0] == 1, lab[0] == 2]).float())
    k2 = KeepLargestConnectedComponent(applied_labels=(1,))(onehot).data
    assert int(k2[1].sum()) == 124 and torch.equal(k2[2], onehot.data[2])
