"""Focal loss (Lin et al. 2017) on logits, sigmoid (per channel) or softmax (across channels)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from medcore.losses.common import check_reduction, check_same_shape, class_weights, prepare_target
from medcore.losses.registry import register_loss


def sigmoid_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float,
                  alpha: float | torch.Tensor | None) -> torch.Tensor:
    """Elementwise ``-(1 - p_t)^gamma log p_t`` with ``p = sigmoid(logits)``, computed in log space.

    A scalar ``alpha`` weights positives by alpha and negatives by 1 - alpha; a per-class tensor
    weights positives of each class only.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    log_one_minus_pt = F.logsigmoid(-logits * (2 * target - 1))
    loss = torch.exp(gamma * log_one_minus_pt) * bce
    if alpha is None:
        return loss
    if isinstance(alpha, float):
        return loss * (target * alpha + (1 - target) * (1 - alpha))
    alpha = alpha.reshape(1, -1, *([1] * (logits.ndim - 2)))
    return loss * torch.where(target == 1, alpha, torch.ones_like(alpha))


def softmax_focal(logits: torch.Tensor, target: torch.Tensor, gamma: float,
                  alpha: float | torch.Tensor | None) -> torch.Tensor:
    """Elementwise ``-alpha_c (1 - p_c)^gamma t_c log p_c`` with ``p = softmax(logits)``.

    A scalar ``alpha`` gives the background (channel 0) ``1 - alpha`` and the others ``alpha``.
    """
    log_p = torch.log_softmax(logits, 1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p * target
    if alpha is None:
        return loss
    if isinstance(alpha, float):
        alpha = torch.full((logits.shape[1],), alpha, dtype=logits.dtype, device=logits.device)
        alpha[0] = 1 - alpha[0]
    return loss * alpha.reshape(1, -1, *([1] * (logits.ndim - 2)))


@register_loss("focal")
class FocalLoss(nn.Module):
    """Focal loss on logits ``(B, C, *spatial)``; ``use_softmax`` switches from per-channel sigmoid.

    ``weight`` scales each class's voxel losses. ``reduction="sum"`` averages over space first and
    then sums over batch and classes; ``"mean"`` averages everything; ``"none"`` is elementwise.
    With ``include_background=False`` the background channel is dropped before the activation, so
    the softmax then runs over the foreground channels only, and a scalar ``alpha`` is ignored.
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, gamma: float = 2.0,
                 alpha: float | Sequence[float] | None = None, weight: float | Sequence[float] | None = None,
                 reduction: str = "mean", use_softmax: bool = False) -> None:
        super().__init__()
        self.include_background, self.to_onehot_y = include_background, to_onehot_y
        self.gamma, self.alpha, self.weight = float(gamma), alpha, weight
        self.reduction, self.use_softmax = check_reduction(reduction), use_softmax

    def _alpha(self, like: torch.Tensor) -> float | torch.Tensor | None:
        if self.alpha is None:
            return None
        if isinstance(self.alpha, (int, float)):
            if self.use_softmax and not self.include_background:
                warnings.warn("focal loss: a scalar alpha is ignored with softmax and include_background=False; "
                              "give one alpha per foreground class instead", stacklevel=3)
                return None
            return float(self.alpha)
        alpha = torch.as_tensor(self.alpha, dtype=like.dtype, device=like.device)
        if alpha.shape[0] != like.shape[1]:
            raise ValueError(f"focal loss: alpha has {alpha.shape[0]} entries but there are {like.shape[1]} classes")
        return alpha

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = prepare_target(input, target, self.to_onehot_y)
        if not self.include_background and input.shape[1] > 1:
            input, target = input[:, 1:], target[:, 1:]
        elif not self.include_background:
            warnings.warn("single-channel prediction: include_background=False is ignored", stacklevel=2)
        check_same_shape(input, target)
        target = target.to(input.dtype)
        focal = softmax_focal if self.use_softmax else sigmoid_focal
        loss = focal(input, target, self.gamma, self._alpha(input))
        if self.weight is not None:
            w = torch.as_tensor(self.weight, dtype=loss.dtype, device=loss.device)
            if w.ndim and input.shape[1] == 1:
                raise ValueError("focal loss: per-class weight needs more than one output channel")
            w = cast(torch.Tensor, class_weights(self.weight, input.shape[1], loss)) if w.ndim else w
            if bool((w < 0).any()):
                raise ValueError(f"focal loss: class weights must be >= 0, got {self.weight}")
            loss = loss * (w.reshape(1, -1, *([1] * (loss.ndim - 2))) if w.ndim else w)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.mean(dim=list(range(2, loss.ndim))).sum()
        return loss
