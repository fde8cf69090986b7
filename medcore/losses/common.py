"""Shared input handling for segmentation losses: activation, one-hot targets, background, reduction."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, allowed: Sequence[str] = REDUCTIONS) -> str:
    """Return ``reduction`` or raise naming the allowed values."""
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {list(allowed)}, got {reduction!r}")
    return reduction


def check_activation(sigmoid: bool, softmax: bool) -> None:
    if sigmoid and softmax:
        raise ValueError("choose at most one of sigmoid=True and softmax=True")


def label_index(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer-valued labels as int64, checked to lie in ``[0, num_classes)``."""
    if labels.ndim < 2 or labels.shape[1] != 1:
        raise ValueError(f"to_onehot_y expects a label map of shape (B, 1, *spatial), got {tuple(labels.shape)}")
    if labels.numel():
        low, high = (int(v) for v in torch.aminmax(labels))
        if low < 0 or high >= num_classes:
            raise ValueError(f"label values must lie in [0, {num_classes - 1}] for {num_classes} prediction "
                             f"channels, got [{low}, {high}]")
    return labels.long()


def one_hot(labels: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(B, 1, *spatial)`` integer-valued labels -> ``(B, num_classes, *spatial)`` one-hot of ``dtype``."""
    index = label_index(labels, num_classes)
    out = torch.zeros((labels.shape[0], num_classes, *labels.shape[2:]), dtype=dtype, device=labels.device)
    return out.scatter_(1, index, 1)


def activate(input: torch.Tensor, sigmoid: bool, softmax: bool) -> torch.Tensor:
    """Apply sigmoid or channel softmax (softmax on one channel is skipped with a warning)."""
    if sigmoid:
        return torch.sigmoid(input)
    if softmax:
        if input.shape[1] == 1:
            warnings.warn("single-channel prediction: softmax=True is ignored", stacklevel=3)
            return input
        return torch.softmax(input, 1)
    return input


def prepare_target(input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool) -> torch.Tensor:
    """One-hot encode ``target`` with ``input.shape[1]`` classes when asked (skipped with a warning for 1 channel)."""
    if to_onehot_y:
        if input.shape[1] == 1:
            warnings.warn("single-channel prediction: to_onehot_y=True is ignored", stacklevel=3)
        else:
            target = one_hot(target, input.shape[1], input.dtype if input.is_floating_point() else torch.float32)
    return target


def drop_background(input: torch.Tensor, target: torch.Tensor, include_background: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove channel 0 from both when ``include_background`` is False (ignored with a warning for 1 channel)."""
    if not include_background:
        if input.shape[1] == 1:
            warnings.warn("single-channel prediction: include_background=False is ignored", stacklevel=3)
        else:
            return input[:, 1:], target[:, 1:]
    return input, target


def check_same_shape(input: torch.Tensor, target: torch.Tensor) -> None:
    if input.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(input.shape)} and target shape {tuple(target.shape)} differ; "
                         "pass a one-hot target with as many channels, or a (B, 1, ...) label map with "
                         "to_onehot_y=True")


def class_weights(weight: float | Sequence[float] | None, num_classes: int, like: torch.Tensor
                  ) -> torch.Tensor | None:
    """Per-class weights as a ``(num_classes,)`` tensor (a scalar is repeated); ``None`` for one channel."""
    if weight is None or num_classes == 1:
        return None
    w = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    if w.ndim == 0:
        w = w.repeat(num_classes)
    elif w.shape[0] != num_classes:
        raise ValueError(f"weight has {w.shape[0]} entries but there are {num_classes} classes "
                         "(without the background when include_background=False)")
    if bool((w < 0).any()):
        raise ValueError(f"class weights must be >= 0, got {w.tolist()}")
    return w


def reduce_per_class(f: torch.Tensor, reduction: str, spatial_ndim: int) -> torch.Tensor:
    """Reduce a ``(B, C)`` or ``(C,)`` score; ``"none"`` keeps a shape that broadcasts against the input."""
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum()
    if f.ndim == 1:
        f = f.unsqueeze(0)
    return f.reshape(*f.shape, *([1] * spatial_ndim))
