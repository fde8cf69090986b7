"""Sliding-window inference against MONAI 1.6's ``sliding_window_inference`` and TTA by flips."""

from __future__ import annotations

import itertools

import pytest
import torch

from medcore.inferers.sliding_window import blend_weights, sliding_window_inference, window_starts
from medcore.inferers.tta import flip_combinations, flip_tta

monai_inferers = pytest.importorskip("monai.inferers")
monai_data_utils = pytest.importorskip("monai.data.utils")


def tiny_net(dims: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(1, 4, 3, padding=1), torch.nn.ReLU(), conv(4, 3, 3, padding=1)).eval()


CASES = [
    # shape, roi, overlap, sw_batch_size
    ((1, 1, 40, 37, 29), (16, 16, 16), 0.5, 1),
    ((2, 1, 33, 20, 25), (16, 12, 20), 0.25, 3),
    ((1, 1, 10, 30, 7), (16, 16, 16), 0.5, 2),  # smaller than the window on two axes: padding
    ((1, 1, 45, 38), (20, 16), (0.6, 0.3), 4),  # 2D, per-axis overlap
]


@pytest.mark.parametrize("mode", ["constant", "gaussian"])
@pytest.mark.parametrize("shape,roi,overlap,sw", CASES)
def test_equals_monai(shape, roi, overlap, sw, mode):
    net = tiny_net(len(shape) - 2)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ours = sliding_window_inference(x, roi, net, overlap=overlap, mode=mode, sw_batch_size=sw)
        ref = monai_inferers.sliding_window_inference(x, roi, sw, net, overlap=overlap, mode=mode)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, torch.as_tensor(ref), rtol=1e-5, atol=1e-5)


def test_sigma_scale_and_weights_match_monai():
    for roi, sigma in [((96, 96, 96), 0.125), ((16, 9, 12), (0.2, 0.1, 0.3)), ((5, 7), 0.5)]:
        ours = blend_weights(roi, "gaussian", sigma)
        ref = monai_data_utils.compute_importance_map(roi, "gaussian", sigma)
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    net = tiny_net(3)
    x = torch.randn(1, 1, 30, 26, 22, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = sliding_window_inference(x, (12, 12, 12), net, overlap=0.4, mode="gaussian", sigma_scale=0.3)
        ref = monai_inferers.sliding_window_inference(x, (12, 12, 12), 1, net, overlap=0.4, mode="gaussian",
                                                      sigma_scale=0.3)
    torch.testing.assert_close(ours, torch.as_tensor(ref), rtol=1e-5, atol=1e-5)


def test_window_grid_matches_monai():
    for size, roi, ov in [((256, 256, 160), (96, 96, 96), 0.5), ((17,), (16,), 0.0), ((100, 7), (30, 7), 0.9)]:
        ours = list(itertools.product(*window_starts(size, roi, [ov] * len(size))))
        interval = monai_inferers.utils._get_scan_interval(size, roi, len(size), [ov] * len(size))
        ref = [tuple(s.start for s in sl) for sl in monai_data_utils.dense_patch_slices(size, roi, interval)]
        assert ours == ref


def test_identity_predictor_returns_input_and_whole_image_roi():
    x = torch.randn(1, 2, 19, 23, 11)
    out = sliding_window_inference(x, (8, -1, None), lambda t: t * 1, overlap=0.5, mode="gaussian", sw_batch_size=5)
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("dims", [2, 3])
def test_channels_last_windows_give_the_same_result(dims):
    net = tiny_net(dims)
    shape = (1, 1, 30, 27, 21)[: dims + 2]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        a = sliding_window_inference(x, 16, net, overlap=0.5, mode="gaussian", sw_batch_size=3)
        fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
        b = sliding_window_inference(x, 16, net.to(memory_format=fmt), overlap=0.5, mode="gaussian",
                                     sw_batch_size=3, channels_last=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_separate_output_device_cpu():
    net = tiny_net(3)
    x = torch.randn(1, 1, 20, 20, 20)
    with torch.inference_mode():
        a = sliding_window_inference(x, 12, net, overlap=0.5, mode="gaussian")
        b = sliding_window_inference(x, 12, net, overlap=0.5, mode="gaussian", sw_device="cpu", device="cpu")
    torch.testing.assert_close(a, b)


def test_bad_arguments_are_clear():
    x = torch.randn(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="roi_size"):
        sliding_window_inference(x, (4, 4), lambda t: t)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(x, 4, lambda t: t, overlap=1.0)
    with pytest.raises(ValueError, match="predictor must return"):
        sliding_window_inference(x, 4, lambda t: t[..., :2])
    with pytest.raises(ValueError, match="blending mode"):
        sliding_window_inference(x, 4, lambda t: t, mode="cosine")
    with pytest.raises(TypeError, match="floating"):
        sliding_window_inference(x.long(), 4, lambda t: t)


def test_flip_tta_inverts_each_flip():
    x = torch.randn(1, 1, 6, 5, 4)
    # an equivariant predictor gives back exactly its own output
    torch.testing.assert_close(flip_tta(x, lambda t: 2 * t), 2 * x)
    assert len(flip_combinations(3)) == 8 and flip_combinations(3, [2]) == [(), (2,)]
    # a non-equivariant one: mean of the un-flipped predictions, computed by hand
    ramp = torch.arange(6.0).view(1, 1, 6, 1, 1)
    out = flip_tta(x, lambda t: t + ramp, axes=[0])
    torch.testing.assert_close(out, x + (ramp + ramp.flip(2)) / 2)
    with pytest.raises(ValueError, match="spatial axes"):
        flip_combinations(3, [3])
