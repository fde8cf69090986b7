"""The dataset side of the engine: per-sample augmentation seeded by (seed, epoch, position).

The engine's batch sampler yields ``(epoch, position, index)`` keys; :class:`EpochDataset` turns a
key into a training sample by applying ``transform(item, rng)`` with a generator derived from
``(seed, epoch, position)`` only. Which worker process runs it, and how many there are, cannot
change the draw, so results are identical for any ``num_workers``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from typing import Any

import torch

Transform = Callable[[Any, torch.Generator], Any]


def sample_rng(seed: int, epoch: int, position: int) -> torch.Generator:
    """A CPU generator that depends only on ``(seed, epoch, position)``."""
    digest = hashlib.sha256(struct.pack("<qqq4s", int(seed), int(epoch), int(position), b"augm")).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


class EpochDataset(torch.utils.data.Dataset):
    """Wrap ``items`` (any indexable: a list, a cache dataset) with a random ``transform``."""

    def __init__(self, items: Sequence, transform: Transform | None = None, seed: int = 0) -> None:
        self.items, self.transform, self.seed = items, transform, int(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int, int] | int) -> Any:
        epoch, position, index = key if isinstance(key, tuple) else (0, int(key), int(key))
        item = self.items[index]
        if self.transform is None:
            return item
        return self.transform(item, sample_rng(self.seed, epoch, position))
