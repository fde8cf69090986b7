"""Sampler sharding, collation of multi-sample crops, and the in-memory cache's footprint."""

from __future__ import annotations

import pytest
import torch
from data_cases import same_sample

from medcore.data import CacheDataset, EpochSampler, collate, decollate, load_datalist, make_loader
from medcore.io import Image
from medcore.transforms import (
    Compose,
    CropForeground,
    ForegroundIndices,
    Keyed,
    NormalizeIntensity,
    Orientation,
    RandCropByPosNegLabel,
    RandFlip,
)


@pytest.mark.parametrize("n,world,shuffle,drop_last", [(10, 2, True, False), (11, 3, True, False),
                                                      (11, 3, False, True), (7, 1, True, False)])
def test_sampler_shards_evenly_and_covers_everything(n, world, shuffle, drop_last):
    per_rank = [EpochSampler(n, shuffle, seed=9, rank=r, world=world, drop_last=drop_last) for r in range(world)]
    for s in per_rank:
        s.set_epoch(2)
    shards = [s.indices() for s in per_rank]
    assert len({len(x) for x in shards}) == 1 and all(len(x) == len(s) for x, s in zip(shards, per_rank, strict=True))
    flat = sum(shards, [])
    if drop_last:
        assert len(set(flat)) == len(flat) == n - n % world
    else:
        assert set(flat) == set(range(n)) and len(flat) == -(-n // world) * world
    assert all(k == (2, i) for k, i in zip(per_rank[0], shards[0], strict=True))
    again = EpochSampler(n, shuffle, seed=9, rank=0, world=world, drop_last=drop_last)
    again.set_epoch(3)
    if shuffle and n > 3:
        assert again.indices() != shards[0]  # another epoch, another order
    same = EpochSampler(n, shuffle, seed=9, rank=0, world=world, drop_last=drop_last)
    same.set_epoch(2)
    assert same.indices() == shards[0]


def test_partitioned_sampler_keeps_each_rank_on_its_shard():
    for epoch in range(3):
        shards = []
        for r in range(3):
            s = EpochSampler(8, True, seed=1, rank=r, world=3, partitioned=True)
            s.set_epoch(epoch)
            shards.append(s.indices())
        assert [sorted(set(x)) for x in shards] == [[0, 3, 6], [1, 4, 7], [2, 5]]
        assert [len(x) for x in shards] == [3, 3, 3]


def _img(value, shape=(1, 4, 4, 4), shift=0.0):
    aff = torch.eye(4, dtype=torch.float64)
    aff[0, 3] = shift
    return Image(torch.full(shape, float(value)), aff, {"v": value}, [{"name": "X", "i": value}])


def test_collate_flattens_multi_sample_items_and_keeps_geometry():
    items = [[{"image": _img(b * 10 + n, shift=n), "w": 1.5, "id": f"c{b}"} for n in range(3)] for b in range(2)]
    items.append(None)  # a skipped item
    batch = collate(items)
    assert batch["image"].shape == (6, 1, 4, 4, 4)
    assert batch["image"][:, 0, 0, 0, 0].tolist() == [0, 1, 2, 10, 11, 12]
    assert batch["image_affine"][:, 0, 3].tolist() == [0, 1, 2, 0, 1, 2]
    assert batch["image_meta"][4] == {"v": 11} and batch["image_ops"][5] == [{"name": "X", "i": 12}]
    assert batch["w"].dtype == torch.float64 and batch["id"] == ["c0"] * 3 + ["c1"] * 3
    back = decollate(batch)
    assert len(back) == 6 and same_sample(back[4]["image"], items[1][1]["image"])
    assert back[4]["image"].meta == {"v": 11}
    only_images = collate([_img(1), _img(2)])
    assert only_images["image"].shape == (2, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="'image'.*different shapes"):
        collate([{"image": _img(1)}, {"image": _img(1, shape=(1, 4, 4, 5))}])


def test_hippocampus_cache_footprint_and_batches(shared_data):
    items = load_datalist(shared_data / "hippocampus")[:12]
    pipe = Compose([Keyed(Orientation("RAS")), Keyed(NormalizeIntensity(nonzero=True), keys="image"),
                    Keyed(CropForeground(source="image", margin=2)), ForegroundIndices("label"),
                    Keyed(RandCropByPosNegLabel((16, 16, 16), num_samples=2)), Keyed(RandFlip(prob=0.5))])
    ds = CacheDataset(items, pipe, seed=0, progress=False)
    rep = ds.memory_report()
    assert rep["entries"] == 12 and rep["ratio"] <= 1.1, rep
    # the crop views were compacted: no cached tensor keeps a larger storage alive
    for s in ds.cache:
        for key in ("image", "label"):
            assert s[key].data.untyped_storage().nbytes() == s[key].data.nbytes
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=0)
    batches = list(loader)
    assert [b["image"].shape[0] for b in batches] == [8, 8, 8]
    assert all(b["label"].shape == (8, 1, 16, 16, 16) for b in batches)
    assert all(set(torch.unique(b["label"]).tolist()) <= {0, 1, 2} for b in batches)


def test_a_bad_file_never_takes_down_a_batch(tmp_path):
    from data_cases import pipeline, write_cases

    items = write_cases(tmp_path / "in", 3)
    broken = tmp_path / "in" / "broken.nii.gz"
    broken.write_bytes(b"\x1f\x8b truncated")
    items.insert(1, {"image": str(broken), "label": items[0]["label"], "case": 99})
    with pytest.raises(Exception, match="broken.nii.gz"):
        CacheDataset(items, pipeline(), progress=False)[1]
    ds = CacheDataset(items, pipeline(), on_error="skip", progress=False)
    assert 1 in ds.errors and "broken.nii.gz" in ds.errors[1]
    batches = list(make_loader(ds, batch_size=4, num_workers=1, seed=0))
    assert len(batches) == 1 and batches[0]["case"].tolist() == [0, 0, 1, 1, 2, 2]  # 3 good items x 2 crops
