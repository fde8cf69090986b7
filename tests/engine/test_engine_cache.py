"""The engine's preprocessing cache is medcore.data's PersistentDataset: shared across runs (and with the
pipeline) by content, skipping unreadable cases with their reason, and ONE copy for all DDP ranks."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medcore.data import mapped_memory
from medcore.engine.distributed import DistContext, barrier
from medcore.engine.run import prepare_run
from medcore.engine.segmentation import make_synthetic_ct
from medcore.io import load_image, save_image

WORLD = 2


def _data(folder: Path, num_cases: int = 5, broken: bool = False) -> Path:
    """Small synthetic CT in the MSD layout, optionally with one unreadable image."""
    make_synthetic_ct(folder, num_cases=num_cases, shape=(64, 64, 32))
    if broken:
        (folder / "imagesTr" / "synthct_099.nii.gz").write_bytes(b"not a nifti file")
        shutil.copy(folder / "labelsTr" / "synthct_000.nii.gz", folder / "labelsTr" / "synthct_099.nii.gz")
    return folder


def _config(data: Path, cache: Path) -> dict:
    return {"preset": "synthetic_ct", "data_dir": str(data), "cache_dir": str(cache), "device": "cpu",
            "split": {"fraction": 0.4, "seed": 1}}


def test_cache_is_shared_by_content_across_runs(tmp_path):
    data, cache = _data(tmp_path / "data"), tmp_path / "cache"
    first = prepare_run(_config(data, cache))
    manifest = first.build_cache(progress=False)
    assert first.dataset.stats["misses"] == 5 and first.manifest_path.is_file()
    assert len(manifest["train"]["ids"]) == 3 and len(manifest["val"]["ids"]) == 2
    assert first.plan["preprocessing"] == first.preprocessing == manifest["preprocessing"]

    # a second run (or the pipeline's cache stage) derives the same key and finds everything built
    second = prepare_run(_config(data, cache))
    assert second.cache_key == first.cache_key and second.read_manifest() == manifest
    second.build_cache(progress=False)
    assert second.dataset.stats == {"hits": 0, "misses": 0, "rebuilt": 0}
    train, val = second.open_cache()
    assert train.ids == manifest["train"]["ids"] and val.ids == manifest["val"]["ids"]
    assert train[0]["image"].shape[0] == 1 and train[0]["label"].dtype == torch.uint8

    # editing one input file's bytes gives a new key; only that case is preprocessed again
    label_path = data / "labelsTr" / f"{manifest['val']['ids'][0]}.nii.gz"
    label = load_image(label_path)
    save_image(label.replace(data=torch.zeros_like(label.data)), label_path)
    third = prepare_run(_config(data, cache))
    assert third.cache_key != first.cache_key and third.read_manifest() is None
    third.build_cache(progress=False)
    assert third.dataset.stats == {"hits": 4, "misses": 1, "rebuilt": 0}
    assert len(list(cache.glob("*.safetensors"))) == 6 and len(list(cache.glob("cases-*.json"))) == 2


def _rank_main(rank: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=WORLD)
    try:
        ctx = DistContext(rank, WORLD, 0, "cpu", "gloo")
        cache = Path(folder) / "cache"
        prep = prepare_run(_config(Path(folder) / "data", cache), ctx=ctx)
        if ctx.is_main:
            prep.build_cache(progress=False)
        barrier(ctx)
        train, val = prep.open_cache()
        touched = sum(float(part[i]["image"].double().sum()) + float(part[i]["label"].sum())
                      for part in (train, val) for i in range(len(part)))
        barrier(ctx)  # both ranks have touched every page before either measures (Pss is split at read time)
        mapped = mapped_memory(os.getpid(), str(cache))
        barrier(ctx)
        report = {"train": train.ids, "val": val.ids, "skipped": train.skipped + val.skipped,
                  "checksum": touched, "mapped": mapped, "misses": prep.dataset.stats["misses"]}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def test_two_ranks_map_one_copy_and_agree_on_skipped_cases(tmp_path):
    _data(tmp_path / "data", num_cases=5, broken=True)
    mp.spawn(_rank_main, args=(str(tmp_path),), nprocs=WORLD, join=True)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    assert reports[0]["train"] == reports[1]["train"] and reports[0]["val"] == reports[1]["val"]
    assert len(reports[0]["train"]) + len(reports[0]["val"]) == 5
    assert reports[0]["checksum"] == reports[1]["checksum"]
    for report in reports:  # the unreadable case is skipped, with its reason, on every rank
        assert [s["id"] for s in report["skipped"]] == ["synthct_099"]
        assert "synthct_099.nii.gz" in report["skipped"][0]["reason"]
    assert reports[0]["misses"] == 6 and reports[1]["misses"] == 0  # rank 0 built, rank 1 only mapped
    entries = sum(p.stat().st_size for p in (tmp_path / "cache").glob("*.safetensors"))
    raw = 5 * 64 * 64 * 32 * (4 + 1)  # float32 image + uint8 label per usable case
    assert raw <= entries <= 1.05 * raw
    # each rank maps every entry (Rss ~ one full copy) but together they hold ONE copy (sum of Pss)
    assert all(r["mapped"]["rss"] >= 0.95 * raw for r in reports)
    total_pss = sum(r["mapped"]["pss"] for r in reports)
    assert 0.9 * raw <= total_pss <= 1.1 * entries, (total_pss, raw)
