"""Learning-rate schedules as pure functions of the step: poly, cosine, constant, with linear warm-up.

A schedule is stateless: ``factor(step)`` multiplies each parameter group's base learning rate, so
resuming needs only the step count, and the learning rate after a resume is bit-identical.
"""

from __future__ import annotations

import dataclasses
import math

import torch

KINDS = ("poly", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class LRSchedule:
    """``kind`` decay over ``total_steps`` after ``warmup_steps`` of linear warm-up from 0.

    poly: ``(1 - t) ** power`` (nnU-Net uses 0.9); cosine: ``min_factor + (1 - min_factor) *
    (1 + cos(pi t)) / 2``; constant: 1. ``t`` runs from 0 to 1 over the steps after warm-up.
    """

    kind: str = "poly"
    total_steps: int = 1000
    warmup_steps: int = 0
    power: float = 0.9
    min_factor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown lr schedule kind {self.kind!r}; choose one of {list(KINDS)}")
        if self.total_steps <= 0 or self.warmup_steps < 0:
            raise ValueError(f"lr schedule needs total_steps > 0 and warmup_steps >= 0, got "
                             f"{self.total_steps} and {self.warmup_steps}")

    def factor(self, step: int) -> float:
        """The multiplier of the base learning rate for optimiser step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        if self.kind == "poly":
            return max(self.min_factor, (1.0 - t) ** self.power)
        if self.kind == "cosine":
            return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))
        return 1.0

    def config(self) -> dict:
        return dataclasses.asdict(self)


def build_schedule(config: dict | None, total_steps: int) -> LRSchedule:
    """An :class:`LRSchedule` from ``{"kind": ..., "warmup_steps": ...}``; ``total_steps`` fills in."""
    config = dict(config or {})
    config.setdefault("total_steps", total_steps)
    allowed = {f.name for f in dataclasses.fields(LRSchedule)}
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ValueError(f"lr schedule config has unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return LRSchedule(**config)


def set_learning_rate(optimizer: torch.optim.Optimizer, schedule: LRSchedule, step: int) -> float:
    """Set every group's ``lr`` to its ``initial_lr`` times ``schedule.factor(step)``; return group 0's."""
    f = schedule.factor(step)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] * f
    return optimizer.param_groups[0]["lr"]
