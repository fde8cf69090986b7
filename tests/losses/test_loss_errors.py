"""Bad loss inputs fail with messages that say what is wrong and what to pass instead."""

from __future__ import annotations

import pytest
import torch

from medcore.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    DiceLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    build_loss,
    loss_names,
)


def test_registry_names():
    assert {"dice", "dice_ce", "dice_focal", "focal", "tversky", "generalized_dice", "deep_supervision"} <= set(
        loss_names())
    with pytest.raises(ValueError, match="unknown loss name 'dicee'"):
        build_loss({"name": "dicee"})
    with pytest.raises(ValueError, match="unknown field.*'softmx'"):
        build_loss({"name": "dice", "softmx": True})


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 1, 4, 4\).*to_onehot_y"):
        DiceLoss(softmax=True)(torch.randn(2, 3, 4, 4), torch.zeros(2, 1, 4, 4))


def test_label_out_of_range():
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 2\]"):
        DiceLoss(softmax=True, to_onehot_y=True)(torch.randn(1, 3, 4, 4), torch.full((1, 1, 4, 4), 3))


def test_bad_weights_and_options():
    with pytest.raises(ValueError, match="weight has 2 entries but there are 3 classes"):
        DiceLoss(weight=[1.0, 2.0])(torch.rand(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match=">= 0"):
        DiceLoss(weight=[1.0, -2.0, 1.0])(torch.rand(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="at most one"):
        DiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="reduction must be one of"):
        DiceCELoss(reduction="none")
    with pytest.raises(ValueError, match="w_type"):
        GeneralizedDiceLoss(w_type="cubic")
    with pytest.raises(ValueError, match="alpha has 2 entries"):
        FocalLoss(alpha=[0.1, 0.2])(torch.randn(1, 3, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="3 weights given for 4 outputs"):
        DeepSupervisionLoss({"name": "dice"}, weights=[1, 1, 1])([torch.rand(1, 1, 2, 2)] * 4, torch.zeros(1, 1, 2, 2))


def test_perfect_prediction_gives_zero_and_gradients_flow():
    labels = torch.randint(0, 3, (2, 1, 6, 6))
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).double()
    assert DiceLoss(smooth_nr=0, smooth_dr=1e-12)(onehot, onehot).item() == pytest.approx(0.0, abs=1e-9)
    logits = torch.randn(2, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    build_loss({"name": "dice_focal", "softmax": True, "to_onehot_y": True})(logits, labels).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
