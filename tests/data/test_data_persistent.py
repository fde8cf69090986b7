"""On-disk cache: content addressing, exact invalidation, damage detection, no pickle."""

from __future__ import annotations

import json
import os
import time

import pytest
import safetensors.torch
import torch
from data_cases import pipeline, same_sample, write_case, write_cases

from medcore.data import Dataset, ItemError, PersistentDataset, file_digest, sample_from_bytes, sample_to_bytes
from medcore.data.persistent import HashIndex
from medcore.io import Image
from medcore.transforms import compute_label_indices


def _files(folder):
    return sorted(p.name for p in folder.glob("*.safetensors"))


def _warm(ds):
    for i in range(len(ds)):
        ds[(0, i)]
    return ds


def test_sample_format_round_trip_without_pickle():
    label = Image(torch.tensor([[[0, 1], [2, 1]]], dtype=torch.uint8), torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])),
                  {"source_format": "nifti", "original_shape": [2, 2]}, [{"name": "Flip", "transform": {"axes": [0]}}])
    sample = {"image": Image(torch.randn(2, 3, 4)), "label": label, "label_indices": compute_label_indices(label),
              "case": 3, "note": None, "crops": [Image(torch.arange(6.0).reshape(1, 2, 3))]}
    buf = sample_to_bytes(sample, key="k1")
    # a plain safetensors file: tensors + string metadata, readable without medcore and without pickle
    tensors = safetensors.torch.load(buf)
    assert tensors["s/image.data"].shape == (2, 3, 4)
    back = sample_from_bytes(buf, key="k1")
    assert same_sample({k: v for k, v in back.items() if k != "label_indices"},
                       {k: v for k, v in sample.items() if k != "label_indices"})
    assert back["label"].meta == label.meta and back["label"].ops == label.ops
    assert back["label_indices"].classes.keys() == sample["label_indices"].classes.keys()
    assert all(torch.equal(back["label_indices"].classes[c], v) for c, v in sample["label_indices"].classes.items())
    with pytest.raises(ValueError, match="key"):
        sample_from_bytes(buf, key="other")
    with pytest.raises(TypeError, match="'s/bad'"):
        sample_to_bytes({"bad": object()})


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "flip_header_byte", "empty", "garbage"])
def test_damaged_entries_are_detected_and_rebuilt(tmp_path, damage):
    items = write_cases(tmp_path / "in", 2)
    ds = _warm(PersistentDataset(items, pipeline(), tmp_path / "c", seed=1, progress=False))
    ref = [Dataset(items, pipeline(), seed=1)[(0, i)] for i in range(2)]
    victim = ds.entry_path(1)
    raw = bytearray(victim.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) - 100]
    elif damage == "flip_data_byte":
        raw[-7] ^= 0x40
    elif damage == "flip_header_byte":
        raw[20] ^= 0x01
    elif damage == "empty":
        raw = bytearray()
    else:
        raw = bytearray(os.urandom(len(raw)))
    victim.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        sample_from_bytes(bytes(raw), ds.keys[1])
    again = PersistentDataset(items, pipeline(), tmp_path / "c", seed=1, progress=False)
    assert same_sample(again[(0, 0)], ref[0]) and same_sample(again[(0, 1)], ref[1])
    assert again.stats == {"hits": 1, "misses": 0, "rebuilt": 1}
    assert sample_from_bytes(victim.read_bytes(), ds.keys[1]) is not None  # rewritten, valid


def test_parameter_change_invalidates_every_entry_and_only_then(tmp_path):
    items = write_cases(tmp_path / "in", 3)
    cache = tmp_path / "c"
    _warm(PersistentDataset(items, pipeline(a_min=0.0), cache, progress=False))
    first = _files(cache)
    # changing only the random rest does not touch the cached prefix
    same = _warm(PersistentDataset(items, pipeline(a_min=0.0, num_samples=3), cache, progress=False))
    assert same.stats["hits"] == 3 and same.stats["misses"] == 0
    # a prefix parameter: every entry is a miss, new files appear, old ones are untouched
    changed = _warm(PersistentDataset(items, pipeline(a_min=10.0), cache, progress=False))
    assert changed.stats == {"hits": 0, "misses": 3, "rebuilt": 0}
    assert set(first) < set(_files(cache)) and len(_files(cache)) == 6
    assert changed.prune() == 3 and len(_files(cache)) == 3


def test_input_bytes_change_invalidates_exactly_that_entry(tmp_path):
    items = write_cases(tmp_path / "in", 3)
    cache = tmp_path / "c"
    ds = _warm(PersistentDataset(items, pipeline(), cache, progress=False))
    keys = list(ds.keys)
    write_case(tmp_path / "in", 1 + 40, shape=(18, 20, 16))  # another content ...
    os.replace(tmp_path / "in" / "case_041_img.nii.gz", items[1]["image"])  # ... moved over case 1's image
    again = _warm(PersistentDataset(items, pipeline(), cache, progress=False))
    assert again.keys[0] == keys[0] and again.keys[2] == keys[2] and again.keys[1] != keys[1]
    assert again.stats == {"hits": 2, "misses": 1, "rebuilt": 0}
    assert same_sample(again[(0, 1)], Dataset(items, pipeline())[(0, 1)])


def test_same_size_rewrite_with_restored_mtime_is_still_detected(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 1000)
    fresh = HashIndex(tmp_path / "idx.json")  # default: a file changed < 1 s ago is never indexed
    fresh.digest(path)
    assert not fresh.entries
    index = HashIndex(tmp_path / "idx.json", settle_ns=0)
    d1 = index.digest(path)
    index.save()
    assert json.loads((tmp_path / "idx.json").read_text())["files"]
    with monkeypatch.context() as m:  # served from the index: the file is not read again
        m.setattr("medcore.data.persistent.file_digest", lambda p: pytest.fail("re-hashed an indexed file"))
        assert HashIndex(tmp_path / "idx.json").digest(path) == d1
    old = os.stat(path)
    time.sleep(0.05)  # past the file system's coarse timestamp tick, so the rewrite gets a new ctime
    path.write_bytes(b"b" * 1000)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # same size, same mtime: only ctime tells
    d2 = HashIndex(tmp_path / "idx.json").digest(path)
    assert d1 != d2 and d2 == file_digest(path)


def test_bad_input_names_the_file_and_does_not_stop_the_rest(tmp_path):
    items = write_cases(tmp_path / "in", 2)
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    items.append({"image": str(bad), "label": items[0]["label"]})
    items.append({"image": str(tmp_path / "missing.nii.gz"), "label": items[0]["label"]})
    ds = PersistentDataset(items, pipeline(), tmp_path / "c", progress=False)
    with pytest.raises(ItemError, match="broken.nii.gz"):
        ds[(0, 2)]
    with pytest.raises(ItemError, match="missing.nii.gz"):
        ds[(0, 3)]
    skipping = PersistentDataset(items, pipeline(), tmp_path / "c", on_error="skip", progress=False)
    assert skipping[(0, 2)] is None and skipping[(0, 3)] is None and skipping[(0, 0)] is not None


def test_prefix_without_config_is_refused(tmp_path):
    items = write_cases(tmp_path / "in", 1)

    class Opaque:
        is_random = False

        def __call__(self, x, rng=None):
            return x

    with pytest.raises(TypeError, match="config"):
        PersistentDataset(items, Opaque(), tmp_path / "c", progress=False)
