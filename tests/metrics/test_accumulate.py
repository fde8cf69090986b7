"""Metric accumulation across batches and across DDP ranks (gloo, 2 processes)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medcore.metrics import MetricAccumulator, confusion_counts, nanmean_rows


def test_batches_accumulate_and_nan_is_skipped():
    acc = MetricAccumulator()
    acc.update(dice=torch.tensor([[0.5, float("nan")], [1.0, 0.25]]))
    acc.update(dice=torch.tensor([[0.0, 0.75]]))
    mean = acc.aggregate()["dice"]
    torch.testing.assert_close(mean, torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert acc.gather()["dice"].shape == (3, 2)
    assert math.isnan(nanmean_rows(torch.tensor([[float("nan")]]))[0].item())
    with pytest.raises(ValueError, match="classes"):
        acc.update(dice=torch.zeros(1, 3))


def test_pooled_rates_from_counts():
    acc = MetricAccumulator()
    p = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    r = p.clone()
    p[0, 0, :2] = True  # 8 predicted
    r[0, 0, :1] = True  # 4 reference, all inside the prediction
    acc.add_counts(confusion_counts(p, r))
    out = acc.aggregate()
    assert out["pooled_sensitivity"].item() == 1.0
    assert out["pooled_precision"].item() == 0.5
    assert out["pooled_dice"].item() == pytest.approx(2 * 4 / 12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc = MetricAccumulator()
        # rank 0 holds 1 case, rank 1 holds 2: uneven shards must still gather in rank order
        values = torch.tensor([[1.0, 2.0]]) if rank == 0 else torch.tensor([[3.0, float("nan")], [5.0, 6.0]])
        acc.update(hd95=values)
        counts = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]) * (rank + 1)
        acc.add_counts(counts)
        result = acc.aggregate()
        out[rank] = (acc.gather()["hd95"].tolist(), result["hd95"].tolist(), acc.total_counts().tolist())
    finally:
        dist.destroy_process_group()


def test_ddp_gather_and_reduce_two_ranks():
    port = _free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        rows, mean, counts = results[rank]
        assert rows[0] == [1.0, 2.0] and rows[2] == [5.0, 6.0] and math.isnan(rows[1][1])
        assert mean == [3.0, 4.0]
        assert counts == [[3.0, 6.0, 9.0, 12.0]]
