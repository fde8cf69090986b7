"""Overlap losses: Dice (and soft Jaccard), Tversky and generalised Dice."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medcore.losses.common import (
    activate,
    check_activation,
    check_reduction,
    check_same_shape,
    class_weights,
    drop_background,
    label_index,
    prepare_target,
    reduce_per_class,
)
from medcore.losses.registry import register_loss


def reduce_axes(ndim: int, batch: bool) -> list[int]:
    """Spatial axes, plus the batch axis when the statistics are pooled over the batch."""
    return ([0] if batch else []) + list(range(2, ndim))


def overlap_sums(p: torch.Tensor, g: torch.Tensor, axes: list[int], squared: bool = False, soft_label: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(intersection, prediction mass, target mass) summed over ``axes``.

    ``squared`` uses squared masses (and the intersection they imply); ``soft_label`` derives the
    intersection from L1 distances, which stays correct for non-binary targets.
    """
    if squared:
        ps, gs = (p * p).sum(axes), (g * g).sum(axes)
        if soft_label:
            return (ps + gs - ((p - g) ** 2).sum(axes)) / 2, ps, gs
        return (p * g).sum(axes), ps, gs
    ps, gs = p.abs().sum(axes) if soft_label else p.sum(axes), g.abs().sum(axes) if soft_label else g.sum(axes)
    if soft_label:
        return (ps + gs - (p - g).abs().sum(axes)) / 2, ps, gs
    return (p * g).sum(axes), ps, gs


class _OverlapLoss(nn.Module):
    """Common options of the overlap losses."""

    def __init__(self, include_background: bool, to_onehot_y: bool, sigmoid: bool, softmax: bool, reduction: str,
                 smooth_nr: float, smooth_dr: float, batch: bool, soft_label: bool) -> None:
        super().__init__()
        check_activation(sigmoid, softmax)
        self.include_background, self.to_onehot_y = include_background, to_onehot_y
        self.sigmoid, self.softmax = sigmoid, softmax
        self.reduction = check_reduction(reduction)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)
        self.batch, self.soft_label = batch, soft_label

    def _prepare(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        input = activate(input, self.sigmoid, self.softmax)
        target = prepare_target(input, target, self.to_onehot_y)
        input, target = drop_background(input, target, self.include_background)
        check_same_shape(input, target)
        return input, target.to(input.dtype)

    def _uses_label_map(self, input: torch.Tensor, target: torch.Tensor) -> bool:
        return self.to_onehot_y and not self.soft_label and input.shape[1] > 1 and target.shape[1] == 1

    def _sums(self, input: torch.Tensor, target: torch.Tensor, squared: bool = False
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(intersection, prediction mass, target mass) per class, pooled as configured.

        With a label map and ``to_onehot_y`` the one-hot target is never built: the intersection
        gathers each voxel's predicted probability of its true class and adds it to that class.
        """
        if not self._uses_label_map(input, target):
            input, target = self._prepare(input, target)
            return overlap_sums(input, target, reduce_axes(input.ndim, self.batch), squared, self.soft_label)
        p = activate(input, self.sigmoid, self.softmax)
        b, c = p.shape[:2]
        if target.shape[0] != b or target.shape[2:] != p.shape[2:]:
            check_same_shape(p[:, :1], target)
        index = label_index(target, c).reshape(b, -1)
        flat = p.reshape(b, c, -1)
        zeros = torch.zeros(b, c, dtype=p.dtype, device=p.device)
        inter = zeros.scatter_add(1, index, flat.gather(1, index[:, None])[:, 0])
        gs = zeros.scatter_add(1, index, torch.ones_like(index, dtype=p.dtype))
        ps = (flat * flat).sum(-1) if squared else flat.sum(-1)
        if not self.include_background:
            inter, ps, gs = inter[:, 1:], ps[:, 1:], gs[:, 1:]
        if self.batch:
            inter, ps, gs = inter.sum(0), ps.sum(0), gs.sum(0)
        return inter, ps, gs


@register_loss("dice")
class DiceLoss(_OverlapLoss):
    """``1 - (2|P∩G| + smooth_nr) / (|P| + |G| + smooth_dr)`` per sample and class, then reduced.

    ``jaccard`` gives the soft IoU loss, ``squared_pred`` squares the masses in the denominator,
    ``batch`` pools the sums over the batch before dividing, ``weight`` scales each class's loss.
    Input is ``(B, C, *spatial)``; target is one-hot of the same shape or, with ``to_onehot_y``,
    a ``(B, 1, *spatial)`` label map.
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, squared_pred: bool = False, jaccard: bool = False, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 weight: float | Sequence[float] | None = None, soft_label: bool = False) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, reduction, smooth_nr, smooth_dr, batch,
                         soft_label)
        self.squared_pred, self.jaccard, self.weight = squared_pred, jaccard, weight

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        inter, ps, gs = self._sums(input, target, self.squared_pred)
        denominator = 2 * (ps + gs - inter) if self.jaccard else ps + gs
        f = 1 - (2 * inter + self.smooth_nr) / (denominator + self.smooth_dr)
        w = class_weights(self.weight, f.shape[-1], f)
        if w is not None:
            f = f * w
        return reduce_per_class(f, self.reduction, input.ndim - 2)


@register_loss("tversky")
class TverskyLoss(_OverlapLoss):
    """``1 - (TP + nr) / (TP + alpha FP + beta FN + dr)``; alpha = beta = 0.5 is the Dice loss.

    With ``reduction="none"`` the result is the raw ``(B, C)`` (or ``(C,)`` with ``batch``) score.
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, alpha: float = 0.5, beta: float = 0.5, reduction: str = "mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 soft_label: bool = False) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, reduction, smooth_nr, smooth_dr, batch,
                         soft_label)
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._uses_label_map(input, target):
            tp, ps, gs = self._sums(input, target)
            fp, fn = ps - tp, gs - tp
            score = 1 - (tp + self.smooth_nr) / (tp + self.alpha * fp + self.beta * fn + self.smooth_dr)
            if self.reduction == "none":
                return score
            return score.mean() if self.reduction == "mean" else score.sum()
        input, target = self._prepare(input, target)
        axes = reduce_axes(input.ndim, self.batch)
        if self.soft_label:
            tp, ps, gs = overlap_sums(input, target, axes, soft_label=True)
            fp, fn = ps - tp, gs - tp
        else:
            tp = (input * target).sum(axes)
            fp, fn = (input * (1 - target)).sum(axes), ((1 - input) * target).sum(axes)
        score = 1 - (tp + self.smooth_nr) / (tp + self.alpha * fp + self.beta * fn + self.smooth_dr)
        if self.reduction == "none":
            return score
        return score.mean() if self.reduction == "mean" else score.sum()


@register_loss("generalized_dice")
class GeneralizedDiceLoss(_OverlapLoss):
    """Generalised Dice (Sudre et al. 2017): classes weighted by 1/volume^2 (``w_type="square"``),
    1/volume (``"simple"``) or equally (``"uniform"``); an empty class takes the largest finite weight.
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, w_type: str = "square", reduction: str = "mean", smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, soft_label: bool = False) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, reduction, smooth_nr, smooth_dr, batch,
                         soft_label)
        if w_type not in ("square", "simple", "uniform"):
            raise ValueError(f"w_type must be 'square', 'simple' or 'uniform', got {w_type!r}")
        self.w_type = w_type

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._uses_label_map(input, target):
            inter, ps, gs = self._sums(input, target)
            volume = gs
        else:
            input, target = self._prepare(input, target)
            axes = reduce_axes(input.ndim, self.batch)
            inter, ps, gs = overlap_sums(input, target, axes, soft_label=self.soft_label)
            volume = target.sum(axes)
        if self.w_type == "uniform":
            w = torch.ones_like(volume)
        else:
            w = 1.0 / (volume * volume if self.w_type == "square" else volume)
        empty = torch.isinf(w)
        w = torch.where(empty, torch.zeros_like(w), w)
        fill = w.max() if self.batch else w.max(dim=1, keepdim=True).values
        w = torch.where(empty, fill, w)
        dim = 0 if self.batch else 1
        numerator = 2 * (inter * w).sum(dim, keepdim=True) + self.smooth_nr
        denominator = ((ps + gs) * w).sum(dim, keepdim=True) + self.smooth_dr
        return reduce_per_class(1 - numerator / denominator, self.reduction, input.ndim - 2)
