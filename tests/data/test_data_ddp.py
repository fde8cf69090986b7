"""DDP: the in-memory cache holds ONE copy per machine (shared) or one shard per rank
(partition), never one copy per rank. Two gloo processes on the CPU."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from data_cases import normalize_only, same_sample

from medcore.data import CacheDataset, Dataset, make_loader, mapped_memory
from medcore.io import Image, save_image

WORLD = 2


def _rank_main(rank: int, folder: str, items: list[dict]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        report: dict = {}
        with pytest.raises(ValueError, match="one cache copy per rank"):
            CacheDataset(items, normalize_only(), mode="local", progress=False)

        shared = CacheDataset(items, normalize_only(), progress=False)  # auto -> shared under DDP
        touched = sum(float(shared[i]["image"].data.double().sum()) for i in range(len(items)))
        dist.barrier()  # both ranks have touched every page before either measures (Pss is split at read time)
        mapped = mapped_memory(os.getpid(), str(shared.shm_folder))
        dist.barrier()
        plain = Dataset(items, normalize_only())
        report["shared"] = {
            "mode": shared.mode, "folder_gone": not shared.shm_folder.exists(),
            "mapped": mapped, "report": shared.memory_report(),
            "same_as_plain": all(same_sample(shared[i], plain[i]) for i in range(len(items))), "checksum": touched,
        }
        part = CacheDataset(items, normalize_only(), mode="partition", progress=False)
        loader = make_loader(part, batch_size=1, shuffle=True, seed=4)
        seen = [int(b["case"][0]) for b in loader]
        report["partition"] = {"cached": [i for i, s in enumerate(part.cache) if s is not None], "seen": seen,
                               "report": part.memory_report()}
        dist.barrier()
        Path(folder, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_cache_is_one_copy_across_two_ranks(tmp_path):
    items = []
    for i in range(5):  # ~1 MB per case so page-level accounting is precise
        g = np.random.default_rng(i)
        img = torch.from_numpy(g.normal(50, 10, size=(1, 64, 64, 60 + i)).astype(np.float32))
        path = tmp_path / f"case{i}.nii"
        save_image(Image(img, torch.eye(4, dtype=torch.float64)), path)
        items.append({"image": str(path), "case": i})
    mp.spawn(_rank_main, args=(str(tmp_path), items), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    shared = [r["shared"] for r in reports]
    assert all(s["mode"] == "shared" and s["folder_gone"] and s["same_as_plain"] for s in shared)
    assert shared[0]["checksum"] == shared[1]["checksum"]
    file_bytes = shared[0]["report"]["cache_bytes"]
    raw = shared[0]["report"]["raw_bytes"]
    assert raw == sum(4 * 64 * 64 * (60 + i) for i in range(5))
    assert file_bytes <= 1.1 * raw
    # each rank sees every entry (Rss ~ one full copy) but together they hold ONE copy (sum of Pss)
    assert all(s["mapped"]["rss"] >= 0.95 * raw for s in shared)
    total_pss = sum(s["mapped"]["pss"] for s in shared)
    assert 0.9 * raw <= total_pss <= 1.1 * file_bytes, (total_pss, raw)

    part = [r["partition"] for r in reports]
    assert part[0]["cached"] == [0, 2, 4] and part[1]["cached"] == [1, 3]
    # each rank reads only its own shard (padded to equal length), so nothing is computed twice
    assert sorted(set(part[0]["seen"])) == [0, 2, 4] and sorted(set(part[1]["seen"])) == [1, 3]
    assert len(part[0]["seen"]) == len(part[1]["seen"]) == 3
    assert part[0]["report"]["raw_bytes"] + part[1]["report"]["raw_bytes"] == raw
