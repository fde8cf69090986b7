"""Datalists: MSD ``dataset.json`` (or an ``imagesTr``/``labelsTr`` folder pair), train/val splits, k folds.

Splits are deterministic and independent of file system order and of the list's order: each item
is ranked by ``blake2b(seed, case id)`` where the case id is the file name of its first image key.
The same seed always gives the same split; with ``kfold(..., balanced=False)`` adding a case never
moves existing cases between folds (each case's fold depends on its own hash only).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

NIFTI = (".nii.gz", ".nii")


def _strip(name: str) -> str:
    for s in NIFTI:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def _resolve(root: Path, value: Any) -> Any:
    if isinstance(value, str) and value.lower().endswith(NIFTI):
        return str((root / value).resolve()) if not os.path.isabs(value) else value
    return value


def _from_folders(root: Path, image_dir: str, label_dir: str) -> list[dict]:
    images = root / image_dir
    if not images.is_dir():
        raise FileNotFoundError(f"{root}: no dataset.json and no {image_dir}/ folder; point to an MSD task folder")
    items = []
    for p in sorted(images.iterdir()):
        if p.name.startswith(".") or not p.name.lower().endswith(NIFTI):
            continue  # hidden files (e.g. macOS "._" resource forks) and non-NIfTI files
        item = {"image": str(p.resolve())}
        label = root / label_dir / p.name
        if (root / label_dir).is_dir():
            if not label.is_file():
                log.warning("%s: no label %s; the case is left out", p, label)
                continue
            item["label"] = str(label.resolve())
        items.append(item)
    if not items:
        raise FileNotFoundError(f"{images}: no NIfTI images found")
    return items


def load_datalist(path: str | os.PathLike, section: str = "training", image_dir: str = "imagesTr",
                  label_dir: str = "labelsTr", missing: str = "error") -> list[dict]:
    """Items (dicts of absolute paths) of an MSD task.

    ``path`` is a ``dataset.json`` or a task folder. A folder without ``dataset.json`` is listed
    from ``image_dir``/``label_dir`` (same file names). Entries whose files do not exist raise
    (``missing="error"``) or are left out with a warning (``missing="skip"``).
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    path = Path(path)
    json_path = path if path.is_file() else path / "dataset.json"
    if not json_path.is_file():
        if section != "training":
            raise FileNotFoundError(f"{path}: no dataset.json, so only section='training' can be listed from folders")
        return _from_folders(path, image_dir, label_dir)
    root = json_path.parent
    try:
        spec = json.loads(json_path.read_text())
    except ValueError as exc:
        raise ValueError(f"{json_path}: not valid JSON ({exc}); fix or regenerate the file") from exc
    if section not in spec:
        sections = sorted(k for k, v in spec.items() if isinstance(v, list))
        raise KeyError(f"{json_path}: no section {section!r}; sections: {sections}")
    items, absent = [], []
    for entry in spec[section]:
        item = {"image": entry} if isinstance(entry, str) else dict(entry)
        item = {k: _resolve(root, v) for k, v in item.items()}
        lost = [v for v in item.values() if isinstance(v, str) and v.lower().endswith(NIFTI) and not os.path.exists(v)]
        if lost:
            absent.extend(lost)
            continue
        items.append(item)
    if absent:
        msg = f"{json_path}: {len(absent)} listed file(s) do not exist, e.g. {absent[0]}"
        if missing == "error":
            raise FileNotFoundError(msg + "; fix the paths or pass missing='skip'")
        log.warning("%s; those cases are left out", msg)
    return items


def case_id(item: dict | str, key: str = "image") -> str:
    """The case's name: file name of ``item[key]`` (or the first value) without NIfTI suffixes."""
    if isinstance(item, dict):
        value = item.get(key, next(iter(item.values())))
    else:
        value = item
    return _strip(Path(os.fspath(value)).name)


def _rank(item: dict, seed: int, key: str) -> bytes:
    return hashlib.blake2b(f"{int(seed)}\0{case_id(item, key)}".encode(), digest_size=16).digest()


def _ordered(items: Sequence[dict], seed: int, key: str) -> list[dict]:
    dup = {x for x, n in Counter(case_id(i, key) for i in items).items() if n > 1}
    if dup:
        raise ValueError(f"case ids must be unique for a stable split; duplicated: {sorted(dup)[:5]}")
    return sorted(items, key=lambda i: _rank(i, seed, key))


def split_train_val(items: Sequence[dict], val_fraction: float = 0.2, seed: int = 0,
                    key: str = "image") -> tuple[list[dict], list[dict]]:
    """``(train, val)``: ``round(n * val_fraction)`` cases to validation, chosen by the seeded hash.
    Both lists are sorted by case id."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ordered = _ordered(items, seed, key)
    n_val = int(round(len(ordered) * val_fraction))
    val, train = ordered[:n_val], ordered[n_val:]
    by_id = lambda i: case_id(i, key)  # noqa: E731
    return sorted(train, key=by_id), sorted(val, key=by_id)


def fold_of(item: dict, k: int, seed: int = 0, key: str = "image") -> int:
    """The fold (0..k-1) of one case, from its own hash only (stable when cases are added)."""
    return int.from_bytes(_rank(item, seed, key)[:8], "little") % int(k)


def kfold(items: Sequence[dict], k: int, fold: int, seed: int = 0, key: str = "image",
          balanced: bool = True) -> tuple[list[dict], list[dict]]:
    """``(train, val)`` for fold ``fold`` of ``k``. ``balanced`` (default) deals the hash-ordered
    cases round-robin, so fold sizes differ by at most one; ``balanced=False`` uses ``fold_of``,
    which keeps every case in its fold when cases are added. Both lists are sorted by case id."""
    if k < 2 or not 0 <= fold < k:
        raise ValueError(f"need k >= 2 and 0 <= fold < k, got k={k}, fold={fold}")
    if balanced:
        ordered = _ordered(items, seed, key)
        val = [it for j, it in enumerate(ordered) if j % k == fold]
        train = [it for j, it in enumerate(ordered) if j % k != fold]
    else:
        _ordered(items, seed, key)
        val = [it for it in items if fold_of(it, k, seed, key) == fold]
        train = [it for it in items if fold_of(it, k, seed, key) != fold]
    by_id = lambda i: case_id(i, key)  # noqa: E731
    return sorted(train, key=by_id), sorted(val, key=by_id)
