"""Overlap metrics from the confusion matrix: Dice, IoU, sensitivity, specificity, precision.

Inputs are binarised one-hot masks shaped ``(B, C, *spatial)`` (bool or 0/1, tensor or array);
every function returns a ``(B, C)`` float64 tensor, one value per case and class.

Empty-mask conventions (the same as MONAI 1.6):

* ``dice``/``iou`` with ``ignore_empty=True`` (default): an empty reference gives ``nan`` (the case
  is left out of means). With ``ignore_empty=False``: both empty gives 1, only the reference empty 0.
* A rate whose denominator is zero is ``nan``: sensitivity with an empty reference, precision with
  an empty prediction, specificity when the reference fills the whole image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

NAN = float("nan")


def as_bool_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` as a bool tensor; 0/1 floats are accepted, anything else must already be binary."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if t.dtype == torch.bool:
        return t
    if t.is_floating_point() and t.numel() and bool(((t != 0) & (t != 1)).any()):
        raise ValueError(f"{name} must be binarised (0/1 or bool), got values other than 0 and 1; "
                         "threshold or argmax + one_hot first")
    return t != 0


def check_pair(pred: Any, ref: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Binarise ``pred``/``ref`` and check they are ``(B, C, *spatial)`` with equal shapes."""
    p, r = as_bool_tensor(pred, "pred"), as_bool_tensor(ref, "ref")
    if p.shape != r.shape:
        raise ValueError(f"pred and ref must have the same shape, got {tuple(p.shape)} and {tuple(r.shape)}")
    if p.ndim < 3:
        raise ValueError(f"pred and ref must be one-hot (B, C, *spatial), got shape {tuple(p.shape)}; "
                         "use medcore.metrics.one_hot on label maps")
    return p, r.to(p.device)


def one_hot(labels: Any, num_classes: int) -> torch.Tensor:
    """Label maps ``(B, *spatial)`` or ``(B, 1, *spatial)`` -> bool one-hot ``(B, num_classes, *spatial)``."""
    t = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    if t.ndim >= 3 and t.shape[1] == 1:
        t = t[:, 0]
    t = t.long()
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got range [{int(t.min())}, {int(t.max())}]")
    classes = torch.arange(num_classes, device=t.device).view(1, num_classes, *([1] * (t.ndim - 1)))
    return t.unsqueeze(1) == classes


def confusion_counts(pred: Any, ref: Any) -> torch.Tensor:
    """``(B, C, 4)`` float64 counts ``[tp, fp, tn, fn]`` per case and class."""
    p, r = check_pair(pred, ref)
    dims = tuple(range(2, p.ndim))
    n_pred = p.sum(dims, dtype=torch.float64)
    n_ref = r.sum(dims, dtype=torch.float64)
    tp = (p & r).sum(dims, dtype=torch.float64)
    total = float(np.prod(p.shape[2:]))
    fp = n_pred - tp
    fn = n_ref - tp
    tn = total - tp - fp - fn
    return torch.stack([tp, fp, tn, fn], dim=-1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den != 0, num / torch.where(den != 0, den, torch.ones_like(den)),
                       torch.full_like(num, NAN))


def rate_from_counts(counts: torch.Tensor, name: str) -> torch.Tensor:
    """A rate from ``[tp, fp, tn, fn]`` counts (last axis): ``sensitivity``, ``specificity``,
    ``precision``, ``dice`` or ``iou``; ``nan`` where the denominator is zero."""
    tp, fp, tn, fn = counts.unbind(-1)
    if name == "sensitivity":
        return _ratio(tp, tp + fn)
    if name == "specificity":
        return _ratio(tn, tn + fp)
    if name == "precision":
        return _ratio(tp, tp + fp)
    if name == "dice":
        return _ratio(2 * tp, 2 * tp + fp + fn)
    if name == "iou":
        return _ratio(tp, tp + fp + fn)
    raise ValueError(f"unknown rate {name!r}; choose sensitivity, specificity, precision, dice or iou")


def _overlap(pred: Any, ref: Any, name: str, ignore_empty: bool) -> torch.Tensor:
    counts = confusion_counts(pred, ref)
    value = rate_from_counts(counts, name)
    tp, fp, _, fn = counts.unbind(-1)
    ref_empty = (tp + fn) == 0
    if ignore_empty:
        return torch.where(ref_empty, torch.full_like(value, NAN), value)
    both_empty = ref_empty & (fp == 0)
    return torch.where(both_empty, torch.ones_like(value), torch.nan_to_num(value, nan=0.0))


def dice(pred: Any, ref: Any, ignore_empty: bool = True) -> torch.Tensor:
    """Dice ``2|P∩R| / (|P| + |R|)`` per case and class, ``(B, C)``; see the module's empty rules."""
    return _overlap(pred, ref, "dice", ignore_empty)


def iou(pred: Any, ref: Any, ignore_empty: bool = True) -> torch.Tensor:
    """Intersection over union ``|P∩R| / |P∪R|`` per case and class, ``(B, C)``."""
    return _overlap(pred, ref, "iou", ignore_empty)


def sensitivity(pred: Any, ref: Any) -> torch.Tensor:
    """True-positive rate ``tp / (tp + fn)``; ``nan`` for an empty reference."""
    return rate_from_counts(confusion_counts(pred, ref), "sensitivity")


def specificity(pred: Any, ref: Any) -> torch.Tensor:
    """True-negative rate ``tn / (tn + fp)``; ``nan`` when the reference covers every voxel."""
    return rate_from_counts(confusion_counts(pred, ref), "specificity")


def precision(pred: Any, ref: Any) -> torch.Tensor:
    """Positive predictive value ``tp / (tp + fp)``; ``nan`` for an empty prediction."""
    return rate_from_counts(confusion_counts(pred, ref), "precision")
