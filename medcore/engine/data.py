"""The dataset side of the engine: per-sample augmentation seeded by (seed, epoch, position).

The engine's batch sampler yields ``(epoch, position, index)`` keys; :class:`EpochDataset` turns a
key into a training sample by applying ``transform(item, rng)`` with
``rng = medcore.transforms.make_rng(seed, epoch, position)``, the project's one seed recipe. Which
worker process runs it, and how many there are, cannot change the draw, so results are identical for
any ``num_workers``. The position (not the item index) seeds the draw so that an item drawn twice in
one epoch (``samples_per_epoch`` above the dataset size) gets two different augmentations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from medcore.transforms import make_rng

Transform = Callable[[Any, torch.Generator], Any]


class Items(Protocol):
    """What ``EpochDataset`` wraps: anything with a length and integer indexing."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


class EpochDataset(torch.utils.data.Dataset):
    """Wrap ``items`` (any indexable: a list, cached cases) with a random ``transform``."""

    def __init__(self, items: Items, transform: Transform | None = None, seed: int = 0) -> None:
        self.items, self.transform, self.seed = items, transform, int(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int, int] | int) -> Any:
        epoch, position, index = key if isinstance(key, tuple) else (0, int(key), int(key))
        item = self.items[index]
        if self.transform is None:
            return item
        return self.transform(item, make_rng(self.seed, epoch, position))
