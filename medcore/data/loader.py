"""``make_loader``: a DataLoader whose samples do not depend on ``num_workers``, with even DDP sharding.

The sampler yields ``(epoch, index)`` keys, so the epoch travels with every request (persistent
workers included) and a medcore dataset draws its randomness from ``make_rng(seed, epoch, index)``
only. The shuffling permutation comes from ``(seed, epoch)`` and is the same on every rank; under
``torch.distributed`` each rank takes every ``world``-th position of it, padded by wrapping around
so all ranks get the same number of samples (or truncated with ``drop_last``). A dataset made with
``CacheDataset(mode="partition")`` gets fixed shards (``index % world == rank``), shuffled within,
so each rank only reads what it cached. Worker processes get seeds derived from ``(seed, worker)``
and one torch thread each; no sample depends on them.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from medcore.data.cache import dist_info
from medcore.data.collate import collate


def _seed_of(*values: int) -> int:
    digest = hashlib.sha256(struct.pack(f"<{len(values)}q", *values)).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator().manual_seed(_seed_of(seed, epoch, 0x5A4D))
    return torch.randperm(n, generator=g).tolist()


def _pad_or_trim(order: list[int], world: int, drop_last: bool) -> list[int]:
    if world == 1 or not order:
        return order
    if drop_last:
        return order[: len(order) - len(order) % world]
    total = -(-len(order) // world) * world
    return (order * (total // len(order) + 1))[:total]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` (or bare indices with ``keyed=False``) for this rank; see module docstring."""

    def __init__(self, n: int, shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1,
                 drop_last: bool = False, partitioned: bool = False, keyed: bool = True) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world, self.drop_last = int(rank), int(world), bool(drop_last)
        self.partitioned, self.keyed = bool(partitioned), bool(keyed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> list[int]:
        """The dataset indices this rank reads in the current epoch, in order."""
        if self.partitioned:
            shards = [list(range(r, self.n, self.world)) for r in range(self.world)]
            size = min(map(len, shards)) if self.drop_last else max(map(len, shards))
            mine = shards[self.rank]
            if self.shuffle and mine:
                mine = [mine[i] for i in _permutation(len(mine), self.seed + self.rank, self.epoch)]
            if not mine:
                return []
            return (mine * (size // len(mine) + 1))[:size]
        order = _permutation(self.n, self.seed, self.epoch) if self.shuffle else list(range(self.n))
        return _pad_or_trim(order, self.world, self.drop_last)[self.rank:: self.world]

    def __iter__(self) -> Iterator[Any]:
        for i in self.indices():
            yield (self.epoch, i) if self.keyed else i

    def __len__(self) -> int:
        if self.partitioned:
            sizes = [len(range(r, self.n, self.world)) for r in range(self.world)]
            return min(sizes) if self.drop_last else max(sizes)
        if self.world == 1:
            return self.n
        return self.n // self.world if self.drop_last else -(-self.n // self.world)


def seed_worker(seed: int) -> Callable[[int], None]:
    """A ``worker_init_fn`` giving worker ``w`` fixed seeds derived from ``(seed, w)`` and one thread."""
    return _WorkerInit(int(seed))


class _WorkerInit:
    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        s = _seed_of(self.seed, worker_id, 0x574B)
        torch.manual_seed(s)
        np.random.seed(s % (1 << 32))
        random.seed(s)
        torch.set_num_threads(1)


class EpochLoader(DataLoader):
    """A ``DataLoader`` with ``set_epoch`` (propagated to its sampler and dataset)."""

    def set_epoch(self, epoch: int) -> None:
        cast(Any, self.sampler).set_epoch(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def make_loader(dataset: Any, batch_size: int = 1, num_workers: int = 0, shuffle: bool = False, seed: int = 0,
                distributed: bool | None = None, drop_last: bool = False,
                collate_fn: Callable[[list], Any] = collate, pin_memory: bool = False,
                persistent_workers: bool = False, epoch: int = 0, **kwargs: Any) -> EpochLoader:
    """A loader over ``dataset``; ``distributed=None`` shards when ``torch.distributed`` is
    initialised. Call ``loader.set_epoch(e)`` before each epoch. Extra kwargs go to DataLoader."""
    rank, world = dist_info()
    if distributed is False:
        rank, world = 0, 1
    elif distributed and world == 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise RuntimeError("make_loader(distributed=True) needs torch.distributed to be initialised first "
                           "(torchrun + init_process_group)")
    sampler = EpochSampler(len(dataset), shuffle, seed, rank, world, drop_last,
                           partitioned=bool(getattr(dataset, "partitioned", False)) and world > 1,
                           keyed=bool(getattr(dataset, "epoch_keys", False)))
    sampler.set_epoch(epoch)
    loader = EpochLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                         collate_fn=collate_fn, pin_memory=pin_memory, drop_last=drop_last,
                         persistent_workers=persistent_workers and num_workers > 0,
                         worker_init_fn=seed_worker(seed) if num_workers > 0 else None,
                         generator=torch.Generator().manual_seed(_seed_of(seed, 0x4C44)), **kwargs)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    return loader
