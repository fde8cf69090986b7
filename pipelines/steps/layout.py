"""Where each stage writes, under the output root. Every name is a keyed pseudonym: no PHI in paths."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from medcore.utils.atomic import atomic_write_text
from pipelines.params import resolve


@dataclass(frozen=True)
class Layout:
    out: Path
    dataset: Path | None = None

    @classmethod
    def from_params(cls, params: dict) -> Layout:
        dataset = params.get("dataset_dir")
        return cls(resolve(params, params["output_dir"]), resolve(params, dataset) if dataset else None)

    def raw_manifest(self, key: str) -> Path:
        return self.out / "raw" / f"{key}.json"

    def index_dir(self, key: str) -> Path:
        return self.out / "index" / key

    def converted_dir(self, key: str) -> Path:
        return self.out / "converted" / key

    def labels_dir(self, key: str) -> Path:
        return self.out / "labels" / key

    @property
    def dataset_dir(self) -> Path:
        return self.dataset if self.dataset is not None else self.out / "dataset"

    @property
    def dataset_version(self) -> Path:
        return self.out / "dataset_version.json"

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
    def latest_json(self) -> Path:
        return self.train_dir / "latest.json"

    @property
    def summary_json(self) -> Path:
        return self.evaluation_dir / "summary.json"

    @property
    def registered_json(self) -> Path:
        return self.out / "registered_model.json"


def write_json(path: Path, value) -> Path:
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

