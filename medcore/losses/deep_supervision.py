"""Deep supervision: one loss over outputs at several scales, with halving, normalised weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medcore.losses.registry import build_loss, register_loss


def scale_weights(levels: int, weights: Sequence[float] | None = None, normalize: bool = True) -> list[float]:
    """``weights`` (first ``levels`` of them) or 1, 1/2, 1/4, ...; divided by their sum when ``normalize``."""
    if weights is not None:
        if len(weights) < levels:
            raise ValueError(f"deep supervision: {len(weights)} weights given for {levels} outputs")
        w = [float(v) for v in weights[:levels]]
    else:
        w = [0.5 ** level for level in range(levels)]
    if any(v < 0 for v in w) or sum(w) <= 0:
        raise ValueError(f"deep supervision weights must be >= 0 and not all 0, got {w}")
    total = sum(w)
    return [v / total for v in w] if normalize else w


def resize_target(target: torch.Tensor, size: Sequence[int], mode: str = "nearest-exact") -> torch.Tensor:
    """Nearest-neighbour resize of a label map or one-hot target to ``size`` (dtype preserved)."""
    if tuple(target.shape[2:]) == tuple(size):
        return target
    work = target if target.is_floating_point() else target.float()
    out = F.interpolate(work, size=tuple(size), mode=mode)
    return out.to(target.dtype)


@register_loss("deep_supervision")
class DeepSupervisionLoss(nn.Module):
    """Apply ``loss`` (a loss config, or a module) to each output of a deeply supervised network.

    Input is a list/tuple of ``(B, C, *spatial_k)`` outputs, finest first, or one tensor. Each
    coarser output is compared with the target resized by nearest neighbour (``interp_mode``
    ``"nearest-exact"`` samples voxel centres, ``"nearest"`` takes the first voxel of each block).
    Output ``k`` weighs ``0.5**k`` (or ``weights[k]``), normalised to sum to 1 unless
    ``normalize=False``.
    """

    def __init__(self, loss: dict | nn.Module, weights: Sequence[float] | None = None, normalize: bool = True,
                 interp_mode: str = "nearest-exact") -> None:
        super().__init__()
        if interp_mode not in ("nearest", "nearest-exact"):
            raise ValueError(f"interp_mode must be 'nearest' or 'nearest-exact', got {interp_mode!r}")
        self.loss = build_loss(loss) if isinstance(loss, dict) else loss
        self.weights, self.normalize, self.interp_mode = weights, normalize, interp_mode

    def forward(self, input: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor):
            return self.loss(input, target)
        if len(input) == 0:
            raise ValueError("deep supervision: no outputs given")
        weights = scale_weights(len(input), self.weights, self.normalize)
        total = torch.zeros((), dtype=input[0].dtype, device=input[0].device)
        for w, output in zip(weights, input):
            total = total + w * self.loss(output, resize_target(target, output.shape[2:], self.interp_mode))
        return total
