"""Test-time augmentation by flips: average the predictions of flipped inputs, each flipped back."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch


def flip_combinations(spatial_dims: int, axes: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Every subset of the spatial ``axes`` (default: all), the empty one (no flip) first."""
    axes = tuple(range(spatial_dims)) if axes is None else tuple(int(a) for a in axes)
    bad = [a for a in axes if not 0 <= a < spatial_dims]
    if bad:
        raise ValueError(f"flip axes {bad} are not spatial axes of a {spatial_dims}D image (0..{spatial_dims - 1})")
    return [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]


def flip_tta(inputs: torch.Tensor, infer: Callable[[torch.Tensor], torch.Tensor],
             axes: Sequence[int] | None = None) -> torch.Tensor:
    """Mean over all flip combinations of ``flip(infer(flip(inputs)))``.

    ``inputs`` is ``(B, C, *spatial)``; ``axes`` are spatial axis indices (0 = first spatial axis).
    ``infer`` maps an input batch to an output with the same spatial shape (e.g. a sliding window
    followed by softmax, so that probabilities are averaged). One running sum is kept.
    """
    combos = flip_combinations(inputs.ndim - 2, axes)
    total: torch.Tensor | None = None
    for combo in combos:
        dims = [a + 2 for a in combo]
        pred = infer(inputs.flip(dims) if dims else inputs)
        if dims:
            pred = pred.flip(dims)
        if total is None:
            total = pred if pred.is_floating_point() else pred.float()
            if total is pred and pred.data_ptr() == inputs.data_ptr():
                total = total.clone()
        else:
            total += pred
        del pred
    assert total is not None
    return total.div_(len(combos))
