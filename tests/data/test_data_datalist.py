"""Datalists: MSD dataset.json and folder listing; deterministic, order-independent splits and folds."""

from __future__ import annotations

import json
import random

import pytest

from medcore.data import case_id, fold_of, kfold, load_datalist, split_train_val


def _ids(items):
    return [case_id(i) for i in items]


@pytest.fixture
def msd_task(tmp_path):
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / sub).mkdir()
    for i in range(4):
        for sub in ("imagesTr", "labelsTr"):
            (tmp_path / sub / f"x_{i:03d}.nii.gz").write_bytes(b"")
    (tmp_path / "imagesTr" / "._x_000.nii.gz").write_bytes(b"")  # macOS resource fork, must be ignored
    (tmp_path / "imagesTs" / "x_100.nii.gz").write_bytes(b"")
    spec = {"name": "X", "training": [{"image": f"./imagesTr/x_{i:03d}.nii.gz", "label": f"./labelsTr/x_{i:03d}.nii.gz"}
                                      for i in range(5)],  # x_004 does not exist
            "test": ["./imagesTs/x_100.nii.gz"]}
    return tmp_path, spec


def test_dataset_json_paths_are_resolved_and_missing_files_reported(msd_task):
    root, spec = msd_task
    (root / "dataset.json").write_text(json.dumps(spec))
    with pytest.raises(FileNotFoundError, match="x_004.nii.gz"):
        load_datalist(root)
    items = load_datalist(root / "dataset.json", missing="skip")
    assert _ids(items) == ["x_000", "x_001", "x_002", "x_003"]
    assert items[0]["image"] == str((root / "imagesTr" / "x_000.nii.gz").resolve())
    assert items[0]["label"] == str((root / "labelsTr" / "x_000.nii.gz").resolve())
    assert load_datalist(root, section="test") == [{"image": str((root / "imagesTs" / "x_100.nii.gz").resolve())}]
    with pytest.raises(KeyError, match="validation"):
        load_datalist(root, section="validation")


def test_folder_listing_without_dataset_json(msd_task):
    root, _ = msd_task
    (root / "labelsTr" / "x_003.nii.gz").unlink()  # an image without its label is left out
    items = load_datalist(root)
    assert _ids(items) == ["x_000", "x_001", "x_002"]
    assert all(set(i) == {"image", "label"} for i in items)


def test_hippocampus_folder(shared_data):
    items = load_datalist(shared_data / "hippocampus")
    assert len(items) == 208
    assert all(case_id(i) == case_id(i, "label") and case_id(i).startswith("hippocampus_") for i in items)


def _cases(n):
    return [{"image": f"/data/imagesTr/case_{i:03d}.nii.gz", "label": f"/data/labelsTr/case_{i:03d}.nii.gz"}
            for i in range(n)]


def test_split_is_seeded_stable_and_order_independent():
    items = _cases(50)
    train, val = split_train_val(items, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert set(_ids(train)).isdisjoint(_ids(val)) and sorted(_ids(train) + _ids(val)) == _ids(items)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    assert split_train_val(shuffled, 0.2, seed=3) == (train, val)
    assert split_train_val(items, 0.2, seed=4)[1] != val
    # the same case files under another folder get the same split (ids are file names)
    moved = [{k: v.replace("/data/", "/elsewhere/") for k, v in i.items()} for i in items]
    assert _ids(split_train_val(moved, 0.2, seed=3)[1]) == _ids(val)
    with pytest.raises(ValueError, match="unique"):
        split_train_val(items + items[:1], 0.2)


def test_kfold_partitions_the_cases():
    items = _cases(23)
    vals = [kfold(items, 5, f, seed=1)[1] for f in range(5)]
    assert sorted(sum((_ids(v) for v in vals), [])) == _ids(items)
    assert {len(v) for v in vals} <= {4, 5}
    train, val = kfold(items, 5, 2, seed=1)
    assert set(_ids(train)).isdisjoint(_ids(val)) and len(train) + len(val) == 23
    assert kfold(list(reversed(items)), 5, 2, seed=1) == (train, val)
    # unbalanced folds depend on each case alone: adding cases never moves an existing case
    before = {case_id(i): fold_of(i, 5, 1) for i in items}
    more = _cases(40)
    assert all(fold_of(i, 5, 1) == before[case_id(i)] for i in more[:23])
    val_u = kfold(more, 5, 0, seed=1, balanced=False)[1]
    assert all(fold_of(i, 5, 1) == 0 for i in val_u)
    with pytest.raises(ValueError):
        kfold(items, 5, 5)
