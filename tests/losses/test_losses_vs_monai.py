"""Every loss equals MONAI 1.6's on random float64 inputs, across the option combinations that matter."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch

monai_losses = pytest.importorskip("monai.losses")

from medcore.losses import (  # noqa: E402
    DeepSupervisionLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceLoss,
    FocalLoss,
    GeneralizedDiceLoss,
    TverskyLoss,
    build_loss,
)

ATOL = 1e-6


def make_inputs(seed: int, shape=(2, 3, 6, 5, 4), empty_class: int | None = 2, dtype=torch.float64):
    """Logits and labels; ``empty_class`` is absent from the labels of sample 0 (empty mask case)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=g, dtype=dtype) * 2
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=g)
    if empty_class is not None:
        labels[0][labels[0] == empty_class] = 0
    onehot = torch.nn.functional.one_hot(labels[:, 0], shape[1]).movedim(-1, 1).to(dtype)
    return logits, labels, onehot


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 0.0) -> None:
    assert torch.isfinite(ours).all()
    assert ours.numel() == theirs.numel()
    torch.testing.assert_close(ours.reshape(-1).double(), theirs.reshape(-1).double(), atol=ATOL, rtol=rtol)


# MONAI's focal loss casts its input to float32, so large elementwise focal values agree to float32
# precision (relative 1e-6) rather than to 1e-6 absolute.
FOCAL_RTOL = 1e-6


def run_both(ours, theirs, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ours(*args), theirs(*args)


DICE_OPTIONS = list(itertools.product(
    ["softmax", "sigmoid", "none"],      # activation
    [True, False],                        # include_background
    [True, False],                        # to_onehot_y
    [False, True],                        # squared_pred
    [False, True],                        # jaccard
    [False, True],                        # batch
))


@pytest.mark.parametrize("act,include_background,to_onehot_y,squared_pred,jaccard,batch", DICE_OPTIONS)
def test_dice_matches_monai(act, include_background, to_onehot_y, squared_pred, jaccard, batch):
    logits, labels, onehot = make_inputs(1)
    kwargs = dict(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=act == "sigmoid",
                  softmax=act == "softmax", squared_pred=squared_pred, jaccard=jaccard, batch=batch)
    x = logits if act != "none" else torch.sigmoid(logits)
    target = labels if to_onehot_y else onehot
    for reduction in ("mean", "sum", "none"):
        ours, theirs = run_both(DiceLoss(reduction=reduction, **kwargs),
                                monai_losses.DiceLoss(reduction=reduction, **kwargs), x, target)
        assert_close(ours, theirs)


@pytest.mark.parametrize("weight", [0.7, [0.2, 1.0, 3.0]])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("smooth", [(1e-5, 1e-5), (0.0, 1e-6), (1.0, 1.0)])
def test_dice_weights_and_smoothing(weight, include_background, smooth):
    if isinstance(weight, list) and not include_background:
        weight = weight[1:]
    logits, labels, _ = make_inputs(2)
    kwargs = dict(softmax=True, to_onehot_y=True, include_background=include_background, weight=weight,
                  smooth_nr=smooth[0], smooth_dr=smooth[1])
    ours, theirs = run_both(DiceLoss(**kwargs), monai_losses.DiceLoss(**kwargs), logits, labels)
    assert_close(ours, theirs)


def test_dice_soft_labels():
    logits, _, _ = make_inputs(3)
    soft = torch.softmax(torch.randn_like(logits), 1)
    for squared in (False, True):
        kwargs = dict(softmax=True, soft_label=True, squared_pred=squared)
        assert_close(*run_both(DiceLoss(**kwargs), monai_losses.DiceLoss(**kwargs), logits, soft))


def test_dice_all_empty_masks_and_single_channel():
    logits, _, _ = make_inputs(4, shape=(2, 1, 5, 5))
    empty = torch.zeros_like(logits)
    for kwargs in (dict(sigmoid=True), dict(sigmoid=True, batch=True), dict(sigmoid=True, jaccard=True)):
        assert_close(*run_both(DiceLoss(**kwargs), monai_losses.DiceLoss(**kwargs), logits, empty))
    # single channel: softmax / one-hot / background options are ignored, as in MONAI
    kwargs = dict(softmax=True, include_background=False)
    assert_close(*run_both(DiceLoss(**kwargs), monai_losses.DiceLoss(**kwargs), torch.sigmoid(logits), empty))


@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("alpha_beta", [(0.5, 0.5), (0.3, 0.7), (0.9, 0.1)])
def test_tversky_matches_monai(act, include_background, batch, alpha_beta):
    logits, labels, _ = make_inputs(5)
    kwargs = dict(include_background=include_background, to_onehot_y=True, sigmoid=act == "sigmoid",
                  softmax=act == "softmax", alpha=alpha_beta[0], beta=alpha_beta[1], batch=batch)
    for reduction in ("mean", "sum", "none"):
        assert_close(*run_both(TverskyLoss(reduction=reduction, **kwargs),
                               monai_losses.TverskyLoss(reduction=reduction, **kwargs), logits, labels))


def test_tversky_soft_labels():
    logits, _, _ = make_inputs(6)
    soft = torch.softmax(torch.randn_like(logits), 1)
    kwargs = dict(softmax=True, soft_label=True, alpha=0.3, beta=0.7)
    assert_close(*run_both(TverskyLoss(**kwargs), monai_losses.TverskyLoss(**kwargs), logits, soft))


@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
def test_generalized_dice_matches_monai(w_type, include_background, batch, act):
    logits, labels, _ = make_inputs(7)  # class 2 is empty in sample 0: exercises the infinite-weight rule
    kwargs = dict(w_type=w_type, include_background=include_background, batch=batch, to_onehot_y=True,
                  softmax=act == "softmax", sigmoid=act == "sigmoid")
    for reduction in ("mean", "sum", "none"):
        assert_close(*run_both(GeneralizedDiceLoss(reduction=reduction, **kwargs),
                               monai_losses.GeneralizedDiceLoss(reduction=reduction, **kwargs), logits, labels))


@pytest.mark.parametrize("use_softmax", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("gamma", [0.0, 2.0, 3.5])
@pytest.mark.parametrize("alpha", [None, 0.25, "per-class"])
@pytest.mark.parametrize("weight", [None, 2.0, "per-class"])
def test_focal_matches_monai(use_softmax, include_background, gamma, alpha, weight):
    logits, labels, _ = make_inputs(8)
    n = 3 if include_background else 2
    alpha = [0.2, 0.5, 0.8][:n] if alpha == "per-class" else alpha
    weight = [0.5, 1.0, 2.0][:n] if weight == "per-class" else weight
    kwargs = dict(use_softmax=use_softmax, include_background=include_background, gamma=gamma, alpha=alpha,
                  weight=weight, to_onehot_y=True)
    for reduction in ("mean", "sum", "none"):
        assert_close(*run_both(FocalLoss(reduction=reduction, **kwargs),
                               monai_losses.FocalLoss(reduction=reduction, **kwargs), logits, labels),
                     rtol=FOCAL_RTOL)


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("onehot_target", [False, True])
@pytest.mark.parametrize("weight", [None, [0.5, 1.0, 2.0]])
@pytest.mark.parametrize("batch", [False, True])
def test_dice_ce_matches_monai(include_background, onehot_target, weight, batch):
    logits, labels, onehot = make_inputs(9)
    kwargs = dict(include_background=include_background, softmax=True, to_onehot_y=not onehot_target, batch=batch,
                  lambda_dice=0.7, lambda_ce=1.3)
    target = onehot if onehot_target else labels
    for reduction in ("mean", "sum"):
        ours = DiceCELoss(reduction=reduction, weight=weight, **kwargs)
        theirs = monai_losses.DiceCELoss(reduction=reduction, weight=None if weight is None
                                         else torch.tensor(weight, dtype=torch.float64), **kwargs)
        assert_close(*run_both(ours, theirs, logits, target))


def test_dice_ce_label_smoothing_and_binary():
    logits, labels, _ = make_inputs(10)
    kwargs = dict(softmax=True, to_onehot_y=True, label_smoothing=0.1)
    assert_close(*run_both(DiceCELoss(**kwargs), monai_losses.DiceCELoss(**kwargs), logits, labels))
    binary_logits, _, _ = make_inputs(11, shape=(2, 1, 6, 6))
    binary = (torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)) > 0.6).double()
    ours = DiceCELoss(sigmoid=True, weight=[2.0])
    theirs = monai_losses.DiceCELoss(sigmoid=True, weight=torch.tensor([2.0], dtype=torch.float64))
    assert_close(*run_both(ours, theirs, binary_logits, binary))


@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("alpha", [None, 0.3])
@pytest.mark.parametrize("weight", [None, "per-class"])
def test_dice_focal_matches_monai(act, include_background, alpha, weight):
    logits, labels, _ = make_inputs(12)
    weight = ([0.5, 1.0, 2.0] if include_background else [1.0, 2.0]) if weight else None
    kwargs = dict(include_background=include_background, to_onehot_y=True, softmax=act == "softmax",
                  sigmoid=act == "sigmoid", alpha=alpha, weight=weight, gamma=1.5, lambda_dice=0.4,
                  lambda_focal=2.0)
    for reduction in ("mean", "sum", "none"):
        assert_close(*run_both(DiceFocalLoss(reduction=reduction, **kwargs),
                               monai_losses.DiceFocalLoss(reduction=reduction, **kwargs), logits, labels),
                     rtol=FOCAL_RTOL)


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_deep_supervision_matches_monai_unnormalised(levels):
    g = torch.Generator().manual_seed(13)
    outputs = [torch.randn(2, 3, 16 // 2 ** k, 12 // 2 ** k, generator=g) for k in range(levels)]
    labels = torch.randint(0, 3, (2, 1, 16, 12), generator=g).float()
    inner = dict(name="dice_ce", softmax=True, to_onehot_y=True)
    ours = DeepSupervisionLoss(inner, normalize=False, interp_mode="nearest-exact")
    theirs = monai_losses.DeepSupervisionLoss(monai_losses.DiceCELoss(softmax=True, to_onehot_y=True),
                                              weight_mode="exp")
    assert_close(*run_both(ours, theirs, outputs, labels))
    # normalised weights are the same losses divided by the weight sum
    normalised = DeepSupervisionLoss(inner)(outputs, labels)
    torch.testing.assert_close(normalised, ours(outputs, labels) / sum(0.5 ** k for k in range(levels)))


def test_deep_supervision_downsamples_targets_with_nearest():
    labels = torch.arange(16.0).reshape(1, 1, 4, 4)
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, x, y):
            seen.append(y)
            return x.sum() * 0

    DeepSupervisionLoss(Probe(), interp_mode="nearest")([torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)], labels)
    assert torch.equal(seen[1], labels[:, :, ::2, ::2])
    seen.clear()
    DeepSupervisionLoss(Probe())([torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 2, 2)], labels.long())
    assert torch.equal(seen[1], labels[:, :, 1::2, 1::2].long())


def test_build_loss_round_trip_is_json():
    import json

    for config in ({"name": "dice", "softmax": True, "weight": [1.0, 2.0]},
                   {"name": "deep_supervision", "loss": {"name": "dice_focal", "sigmoid": True}}):
        loss = build_loss(config)
        rebuilt = build_loss(json.loads(json.dumps(loss.config)))
        assert rebuilt.config == loss.config
    logits, labels, _ = make_inputs(14)
    a = build_loss({"name": "dice_ce", "softmax": True, "to_onehot_y": True})
    assert_close(a(logits, labels), build_loss(a.config)(logits, labels))
