"""One code path for one process, several CPU processes (gloo) and several GPUs (NCCL).

``init_distributed()`` reads the variables ``torchrun`` sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``). Without them, or with ``WORLD_SIZE=1``, nothing is initialised and every helper
here degrades to the single-process answer, so callers never branch on "am I distributed?".
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import os
import struct
from collections.abc import Iterator

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank among ``world_size`` processes and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Only the main process (rank 0) writes logs, checkpoints and reports."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def choose_backend(device: str) -> str:
    """NCCL for CUDA devices, gloo otherwise."""
    return "nccl" if device.startswith("cuda") else "gloo"


def choose_device(local_rank: int = 0, requested: str = "auto") -> str:
    """The device string for this process: ``"auto"`` is the local GPU when CUDA is available, else the
    CPU; ``"cuda"`` is this process's local GPU (``cuda:<local_rank>``); anything else as given."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for, but PyTorch sees no CUDA device (CPU-only build "
                           "or no GPU); set device to auto or cpu")
    return f"cuda:{local_rank}" if requested == "cuda" else requested


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistContext:
    """Initialise the process group from torchrun's environment; a no-op for one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(local_rank, device)
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    backend = choose_backend(dev)
    if not dist.is_initialized():
        device_id = torch.device(dev) if backend == "nccl" else None
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), device_id=device_id)
    return DistContext(rank, world, local_rank, dev, backend)


def shutdown_distributed() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``values`` (float64 on the wire) over all ranks; identity for one process."""
    if not ctx.is_distributed:
        return values
    wire = values.detach().to(device=ctx.device if ctx.backend == "nccl" else "cpu", dtype=torch.float64)
    dist.all_reduce(wire, op=dist.ReduceOp.SUM)
    return wire.to(values.device)


def all_reduce_mean(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean of ``values`` over all ranks."""
    return all_reduce_sum(values, ctx) / ctx.world_size if ctx.is_distributed else values


def all_gather_bytes(payload: torch.Tensor, ctx: DistContext) -> list[torch.Tensor]:
    """Gather one uint8 tensor of the same length from every rank (no pickle, unlike gather_object)."""
    if not ctx.is_distributed:
        return [payload]
    wire = payload.to(ctx.device if ctx.backend == "nccl" else "cpu")
    out = [torch.empty_like(wire) for _ in range(ctx.world_size)]
    dist.all_gather(out, wire)
    return [t.cpu() for t in out]


def broadcast_flag(flag: bool, ctx: DistContext) -> bool:
    """Rank 0's boolean, on every rank (e.g. an early-stopping decision)."""
    if not ctx.is_distributed:
        return flag
    wire = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64,
                        device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.broadcast(wire, src=0)
    return bool(wire.item() > 0.5)


def epoch_permutation(n: int, seed: int, epoch: int, round_: int = 0) -> torch.Tensor:
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch, round_)``."""
    digest = hashlib.sha256(struct.pack("<qqq", int(seed), int(epoch), int(round_))).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return torch.randperm(n, generator=g)


class ShardedBatchSampler:
    """Batches of ``(epoch, position, index)`` keys, sharded evenly over ranks, resumable mid-epoch.

    Each epoch draws ``samples_per_epoch`` indices (default: the dataset size; longer epochs
    concatenate further permutations), rounded to a multiple of ``world_size * batch_size`` (cut
    when ``drop_last``, else padded by wrapping). Rank ``r`` takes every ``world_size``-th key from
    ``r``, so the union of the ranks' ``k``-th batches is the ``k``-th block of ``world_size *
    batch_size`` keys: exactly the batch a single process with the multiplied batch size sees.
    ``set_epoch(epoch, start_batch)`` skips the batches already trained before a checkpoint.
    ``position`` (the key's place in the epoch) seeds the sample's augmentation, so repeats of an
    index within an epoch get different draws and the draws do not depend on the worker count.
    """

    def __init__(self, num_items: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True, samples_per_epoch: int | None = None) -> None:
        if num_items <= 0:
            raise ValueError("ShardedBatchSampler: the dataset is empty; check the datalist or split")
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"ShardedBatchSampler: bad batch_size={batch_size}, rank={rank}, world_size={world_size}")
        self.num_items, self.batch_size, self.rank, self.world_size = num_items, batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.samples_per_epoch = samples_per_epoch or num_items
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _global_keys(self) -> list[int]:
        block = self.batch_size * self.world_size
        wanted = self.samples_per_epoch
        if self.drop_last and wanted >= block:
            wanted -= wanted % block
        else:
            wanted += (-wanted) % block
        order: list[int] = []
        round_ = 0
        while len(order) < wanted:
            if self.shuffle:
                order.extend(epoch_permutation(self.num_items, self.seed, self.epoch, round_).tolist())
            else:
                order.extend(range(self.num_items))
            round_ += 1
        return order[:wanted]

    def __len__(self) -> int:
        """Batches per epoch on each rank (before skipping ``start_batch``)."""
        block = self.batch_size * self.world_size
        wanted = self.samples_per_epoch
        wanted = wanted - wanted % block if self.drop_last and wanted >= block else wanted + (-wanted) % block
        return wanted // block

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        keys = self._global_keys()
        mine = [(self.epoch, pos, keys[pos]) for pos in range(self.rank, len(keys), self.world_size)]
        for b in range(self.start_batch, len(mine) // self.batch_size):
            yield mine[b * self.batch_size:(b + 1) * self.batch_size]


def shard_indices(num_items: int, ctx: DistContext) -> list[int]:
    """This rank's share of ``range(num_items)`` for evaluation: uneven by at most one, nothing repeated."""
    return list(range(ctx.rank, num_items, ctx.world_size))
