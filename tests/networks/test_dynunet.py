"""DynUNet: nnU-Net's kernel/stride rule, deep-supervision outputs and their loss."""

from __future__ import annotations

import pytest
import torch

from medcore.losses import DeepSupervisionLoss
from medcore.networks import DynUNet, build_network, dynunet_kernels_strides


def test_isotropic_patch_halves_every_axis_down_to_4():
    kernels, strides = dynunet_kernels_strides([1.0, 1.0, 1.0], [128, 128, 128])
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 5
    assert kernels == [[3, 3, 3]] * 6


def test_anisotropic_axis_waits_until_spacing_is_within_2x():
    # z is 3.75x coarser: 1x1 kernel and no downsampling until x/y have been halved once.
    kernels, strides = dynunet_kernels_strides([0.8, 0.8, 3.0], [128, 128, 32])
    assert strides == [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
    assert kernels == [[3, 3, 1], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]


def test_small_axes_stop_at_min_size_and_2d_works():
    _, strides = dynunet_kernels_strides([1.0, 1.0], [64, 12])
    # y stops below size 8; x stops once it is more than 2x coarser than y
    assert strides == [[1, 1], [2, 2], [2, 1], [2, 1]]
    _, capped = dynunet_kernels_strides([1.0, 1.0], [64, 64], max_downsamplings=2)
    assert capped == [[1, 1], [2, 2], [2, 2]]


def test_plan_rejects_bad_input():
    with pytest.raises(ValueError, match="divisible"):
        dynunet_kernels_strides([1.0, 1.0, 1.0], [96, 96, 18])
    with pytest.raises(ValueError, match="same length"):
        dynunet_kernels_strides([1.0, 1.0], [64, 64, 64])


def test_plan_builds_a_working_network():
    kernels, strides = dynunet_kernels_strides([0.7, 0.7, 2.5], [32, 32, 8])
    net = build_network({"name": "dynunet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                         "kernel_size": kernels, "strides": strides, "filters": [4] * len(strides)}).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 32, 8)).shape == (1, 2, 32, 32, 8)


def test_deep_supervision_outputs_train_vs_eval_and_loss():
    torch.manual_seed(0)
    net = DynUNet(2, 1, 3, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2], filters=[4, 8, 8, 8],
                  deep_supervision=True, deep_supr_num=2)
    x = torch.randn(2, 1, 32, 16)
    outs = net.train()(x)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 32, 16), (2, 3, 16, 8), (2, 3, 8, 4)]
    with torch.no_grad():
        single = net.eval()(x)
    assert isinstance(single, torch.Tensor) and single.shape == (2, 3, 32, 16)
    torch.testing.assert_close(single, net.train()(x)[0].detach())  # instance norm: same in both modes
    labels = torch.randint(0, 3, (2, 1, 32, 16))
    loss = DeepSupervisionLoss({"name": "dice_ce", "softmax": True, "to_onehot_y": True})(net(x), labels)
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_invalid_deep_supervision_count_is_refused():
    with pytest.raises(ValueError, match="deep_supr_num"):
        DynUNet(2, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], filters=[4, 4, 4], deep_supervision=True,
                deep_supr_num=2)
