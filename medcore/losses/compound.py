"""Weighted sums of an overlap loss and a voxelwise loss: Dice + cross-entropy, Dice + focal."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medcore.losses.common import check_reduction, prepare_target
from medcore.losses.dice import DiceLoss
from medcore.losses.focal import FocalLoss
from medcore.losses.registry import register_loss


def _check_lambdas(**lambdas: float) -> None:
    for name, value in lambdas.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")


def _check_target(input: torch.Tensor, target: torch.Tensor) -> None:
    if input.ndim != target.ndim:
        raise ValueError(f"prediction {tuple(input.shape)} and target {tuple(target.shape)} differ in rank; "
                         "give the target a channel axis: (B, 1, *spatial) labels or (B, C, *spatial) one-hot")
    if target.shape[1] not in (1, input.shape[1]):
        raise ValueError(f"target has {target.shape[1]} channels; expected 1 (labels) or {input.shape[1]} (one-hot)")


@register_loss("dice_ce")
class DiceCELoss(nn.Module):
    """``lambda_dice * Dice + lambda_ce * cross-entropy`` on logits.

    Cross-entropy uses class indices when the target has one channel, class probabilities when it is
    one-hot, and binary cross-entropy with ``weight`` as positive weight for a single output channel.
    ``weight`` also weights the Dice classes (minus the background when it is excluded).
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight: Sequence[float] | None = None, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        check_reduction(reduction, ("mean", "sum"))
        _check_lambdas(lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        dice_weight = list(weight)[1:] if weight is not None and not include_background else weight
        self.dice = DiceLoss(include_background, to_onehot_y, sigmoid, softmax, squared_pred, jaccard, reduction,
                             smooth_nr, smooth_dr, batch, dice_weight)
        self.reduction, self.weight, self.label_smoothing = reduction, weight, float(label_smoothing)
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)

    def cross_entropy(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else torch.as_tensor(self.weight, dtype=input.dtype, device=input.device)
        if input.shape[1] == 1:
            return F.binary_cross_entropy_with_logits(input, target.to(input.dtype), pos_weight=weight,
                                                      reduction=self.reduction)
        if target.shape[1] == 1:
            target = target[:, 0].long()
        else:
            target = target.to(input.dtype)
        return F.cross_entropy(input, target, weight=weight, reduction=self.reduction,
                               label_smoothing=self.label_smoothing)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_target(input, target)
        return self.lambda_dice * self.dice(input, target) + self.lambda_ce * self.cross_entropy(input, target)


@register_loss("dice_focal")
class DiceFocalLoss(nn.Module):
    """``lambda_dice * Dice + lambda_focal * focal``; the focal term is sigmoid-based unless
    ``focal_use_softmax``. ``include_background``, ``weight`` and ``reduction`` apply to both terms."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False, gamma: float = 2.0,
                 weight: float | Sequence[float] | None = None, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                 alpha: float | None = None, focal_use_softmax: bool = False) -> None:
        super().__init__()
        _check_lambdas(lambda_dice=lambda_dice, lambda_focal=lambda_focal)
        self.dice = DiceLoss(include_background, False, sigmoid, softmax, squared_pred, jaccard, reduction,
                             smooth_nr, smooth_dr, batch, weight)
        self.focal = FocalLoss(include_background, False, gamma, alpha, weight, reduction, focal_use_softmax)
        self.to_onehot_y = to_onehot_y
        self.lambda_dice, self.lambda_focal = float(lambda_dice), float(lambda_focal)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_target(input, target)
        target = prepare_target(input, target, self.to_onehot_y)
        return self.lambda_dice * self.dice(input, target) + self.lambda_focal * self.focal(input, target)
