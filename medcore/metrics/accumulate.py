"""Accumulate metrics over batches and across DDP ranks.

``MetricAccumulator`` keeps per-case ``(B, C)`` values of any named metric and running confusion
counts. ``gather()`` returns every case from every rank (all-gather of per-case values, padded to
the largest rank) and ``total_counts()`` the confusion counts summed over ranks (all-reduce).
Outside ``torch.distributed`` both are the local values. Means skip ``nan`` (cases where the
metric is undefined, e.g. an empty reference); ``inf`` is kept, so one missed structure shows.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from medcore.metrics.overlap import rate_from_counts


def distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    backend = dist.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Concatenate ``values`` (rows of any count, same trailing shape) from all ranks, in rank order."""
    if not distributed():
        return values
    device = _comm_device()
    local = values.to(device=device, dtype=torch.float64)
    n = torch.tensor([local.shape[0]], device=device, dtype=torch.int64)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    longest = int(max(int(s) for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), device=device, dtype=torch.float64)
    padded[: local.shape[0]] = local
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(s)] for part, s in zip(parts, sizes)]).cpu()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum ``values`` over all ranks (a copy; the input is untouched)."""
    if not distributed():
        return values.clone()
    total = values.to(device=_comm_device(), dtype=torch.float64).clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.cpu()


class MetricAccumulator:
    """Collect per-case metric values and confusion counts over batches; combine across ranks."""

    def __init__(self) -> None:
        self._values: dict[str, list[torch.Tensor]] = {}
        self._counts: torch.Tensor | None = None

    def reset(self) -> None:
        self._values.clear()
        self._counts = None

    def update(self, **metrics: torch.Tensor) -> None:
        """Add ``(B, C)`` per-case values for each named metric, e.g. ``update(dice=d, hd95=h)``."""
        for name, value in metrics.items():
            v = torch.as_tensor(value).detach().to("cpu", torch.float64)
            if v.ndim != 2:
                raise ValueError(f"metric {name!r} must be (B, C) per-case values, got shape {tuple(v.shape)}")
            known = self._values.setdefault(name, [])
            if known and known[0].shape[1] != v.shape[1]:
                raise ValueError(f"metric {name!r} had {known[0].shape[1]} classes, now {v.shape[1]}")
            known.append(v)

    def add_counts(self, counts: torch.Tensor) -> None:
        """Add ``(B, C, 4)`` confusion counts ``[tp, fp, tn, fn]`` (``confusion_counts`` output)."""
        c = torch.as_tensor(counts).detach().to("cpu", torch.float64).sum(0)
        self._counts = c if self._counts is None else self._counts + c

    def local(self, name: str) -> torch.Tensor:
        """This rank's ``(N, C)`` values of ``name``."""
        if name not in self._values:
            raise KeyError(f"no values recorded for metric {name!r}; recorded: {sorted(self._values)}")
        return torch.cat(self._values[name])

    def gather(self) -> dict[str, torch.Tensor]:
        """Every case's values from every rank: ``{name: (N_total, C)}``. Collective: call on all ranks."""
        return {name: all_gather_rows(self.local(name)) for name in sorted(self._values)}

    def total_counts(self) -> torch.Tensor:
        """``(C, 4)`` confusion counts summed over batches and ranks. Collective: call on all ranks."""
        if self._counts is None:
            raise ValueError("no confusion counts recorded; call add_counts first")
        return all_reduce_sum(self._counts)

    def aggregate(self) -> dict[str, torch.Tensor]:
        """Per-class means over all cases of all ranks (``nan`` skipped): ``{name: (C,)}``, plus
        pooled ``sensitivity``/``specificity``/``precision``/``dice`` from the summed counts when
        counts were added (prefixed ``pooled_``). Collective: call on all ranks."""
        out = {name: nanmean_rows(values) for name, values in self.gather().items()}
        if self._counts is not None:
            counts = self.total_counts()
            for rate in ("sensitivity", "specificity", "precision", "dice"):
                out[f"pooled_{rate}"] = rate_from_counts(counts, rate)
        return out


def nanmean_rows(values: torch.Tensor) -> torch.Tensor:
    """Column means of ``(N, C)`` values ignoring ``nan``; a column with no valid value is ``nan``."""
    valid = ~torch.isnan(values)
    total = torch.where(valid, values, torch.zeros_like(values)).sum(0)
    n = valid.sum(0)
    return torch.where(n > 0, total / n.clamp(min=1), torch.full_like(total, float("nan")))
