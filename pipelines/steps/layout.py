"""Where each stage writes, under the output root. Every name is a keyed pseudonym: no PHI in paths."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.params import resolve


@dataclass(frozen=True)
class Layout:
    out: Path
    dataset: Path | None = None

    @classmethod
    def from_params(cls, params: dict) -> Layout:
        return cls(resolve(params, params["output_dir"]), resolve(params, params.get("dataset_dir")))

    def raw_manifest(self, key: str) -> Path:
        return self.out / "raw" / f"{key}.json"

    def index_dir(self, key: str) -> Path:
        return self.out / "index" / key

    def converted_dir(self, key: str) -> Path:
        return self.out / "converted" / key

    @property
    def dataset_dir(self) -> Path:
        return self.dataset if self.dataset is not None else self.out / "dataset"

    @property
    def cache_dir(self) -> Path:
        return self.out / "cache"

    @property
    def train_dir(self) -> Path:
        return self.out / "train"

    @property
    def evaluation_dir(self) -> Path:
        return self.out / "evaluation"

    @property
    def registered_json(self) -> Path:
        return self.out / "registered_model.json"


def write_json(path: Path, value) -> Path:
    from medcore.utils.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(value, indent=1, sort_keys=True, default=str) + "\n")
    return path


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hash(folder: Path, exclude: tuple[str, ...] = ()) -> str:
    """Content hash of a folder: sorted relative paths and each file's sha256."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in exclude or any(part.startswith(".tmp-") for part in path.parts):
            continue
        h.update(rel.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``final`` in one rename.

    A crash leaves only a ``.tmp-*`` sibling, never a half-written ``final``; stale ones are removed
    by :func:`sweep_tmp` at the next start.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if final.exists():
            old = final.parent / f".tmp-old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_tmp(folder: Path) -> int:
    """Remove leftovers of interrupted writes (``.tmp-*`` entries) directly under ``folder``."""
    n = 0
    if Path(folder).is_dir():
        for p in Path(folder).glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            n += 1
    return n


def labels_dir(layout: Layout, key: str) -> Path:
    return layout.out / "labels" / key
