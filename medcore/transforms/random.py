"""Random draws for transforms: the one home of the seeded generators and the draw helpers.

Every random transform draws its parameters here from an explicit ``torch.Generator`` (ARCHITECTURE
rule 6), in a fixed order, so a sample is replayable from ``make_rng(seed, epoch, index)``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import torch

#: a range spec: ``x`` means ``(-x, x)``; a pair is ``(lo, hi)``.
Range = float | tuple[float, float]
#: per-axis ranges: one ``Range`` for every axis, or one per axis (the last repeats); None is no range.
AxisRanges = Range | Sequence[Range] | None


def make_rng(seed: int, epoch: int = 0, index: int = 0) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, epoch, index)`` by hashing, so streams of
    neighbouring samples/epochs are independent and do not depend on worker count or order."""
    digest = hashlib.sha256(struct.pack("<qqq", int(seed), int(epoch), int(index))).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


def new_rng() -> torch.Generator:
    """A generator seeded from the OS: not reproducible, but what it draws is still recorded."""
    g = torch.Generator()
    g.seed()
    return g


def uniform(rng: torch.Generator | None, lo: float, hi: float) -> float:
    """One float64 draw, uniform in ``[lo, hi)``."""
    return float(lo + (hi - lo) * torch.rand((), generator=rng, dtype=torch.float64))


def coin(rng: torch.Generator | None, prob: float) -> bool:
    """True with probability ``prob``."""
    return float(torch.rand((), generator=rng)) < prob


def integer(rng: torch.Generator | None, lo: int, hi: int) -> int:
    """One integer, uniform in ``[lo, hi)``."""
    return int(torch.randint(lo, hi, (), generator=rng))


def seed(rng: torch.Generator | None) -> int:
    """A fresh seed for a concrete transform that regenerates its own noise."""
    return integer(rng, 0, 2**62)


def as_range(v: Range) -> tuple[float, float]:
    """``x`` -> ``(-x, x)``; ``(lo, hi)`` unchanged."""
    if isinstance(v, int | float):
        return (-float(v), float(v))
    return (float(v[0]), float(v[1]))


def axis_ranges(r: AxisRanges, d: int) -> list[tuple[float, float]]:
    """``d`` ranges from a per-axis spec (see ``AxisRanges``); None gives ``(0, 0)`` ranges."""
    if r is None:
        return [(0.0, 0.0)] * d
    if isinstance(r, int | float):
        return [as_range(r)] * d
    out = [as_range(v) for v in r]
    return (out + [out[-1]] * d)[:d] if out else [(0.0, 0.0)] * d
