"""``CacheDataset``: the deterministic prefix cached in memory, one copy per machine under DDP.

Modes (``mode=``):

* ``"local"``: plain tensors in this process (one process, or DataLoader workers forked from
  it, which share the pages copy-on-write). Refused under DDP with more than one rank, since that
  would hold one copy per rank (MONAI #913, #5930).
* ``"shared"`` (the default under DDP): every rank builds its shard (``index % world == rank``)
  and writes it as a safetensors file under ``/dev/shm``; after a barrier every rank memory-maps
  ALL files (``MAP_PRIVATE``, so a stray in-place write copies a page instead of corrupting the
  cache) and rank 0 unlinks them. The pages live once in shared memory whatever the number of
  ranks and workers, and vanish with the last process.
* ``"partition"``: each rank caches only its shard; pair it with ``make_loader`` (which then gives
  each rank a fixed shard, shuffled within). Other indices are computed on the fly.

``memory_report()`` gives the cache's bytes against the raw bytes of the arrays it holds;
``mapped_memory(pid, prefix)``, ``process_pss(pid)`` and ``total_pss(pids)`` read ``/proc`` to
measure real sharing (sum them over ranks). ``MEDCORE_SHM_DIR`` overrides ``/dev/shm``. If a rank is
killed while the cache is being built, its ``medcore-cache-*`` folder may be left in ``/dev/shm``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from medcore.data.dataset import Dataset, ItemError, Transform
from medcore.data.persistent import map_sample_file, own_tensor, sample_to_bytes
from medcore.io import Image
from medcore.transforms.crop_pad import LabelIndices
from medcore.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shm_root() -> Path:
    """Folder for shared cache files: ``$MEDCORE_SHM_DIR``, else ``/dev/shm`` (Linux), else the
    temporary folder. It must be a RAM-backed file system (tmpfs) shared by all local ranks."""
    env = os.environ.get("MEDCORE_SHM_DIR")
    if env:
        return Path(env)
    return Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


# --- byte accounting -----------------------------------------------------------------------------
def _walk_tensors(sample: Any):
    """Yield ``(tensor, is_array)`` for every tensor in a sample (affines are not arrays)."""
    if isinstance(sample, Image):
        yield sample.data, True
        yield sample.affine, False
    elif isinstance(sample, LabelIndices):
        for t in sample.classes.values():
            yield t, True
    elif isinstance(sample, torch.Tensor):
        yield sample, True
    elif isinstance(sample, dict):
        for v in sample.values():
            yield from _walk_tensors(v)
    elif isinstance(sample, list | tuple):
        for v in sample:
            yield from _walk_tensors(v)


def _json_bytes(sample: Any) -> int:
    """Approximate bytes of the non-tensor parts (meta, ops, plain values) as compact JSON."""
    if isinstance(sample, Image):
        return len(json.dumps([sample.meta, sample.ops], default=str))
    if isinstance(sample, dict):
        return sum(len(k) + _json_bytes(v) for k, v in sample.items())
    if isinstance(sample, list | tuple):
        return sum(_json_bytes(v) for v in sample)
    if isinstance(sample, torch.Tensor | LabelIndices):
        return 0
    return len(json.dumps(sample, default=str))


def sample_nbytes(samples: Sequence[Any]) -> tuple[int, int]:
    """``(cache_bytes, raw_bytes)`` of samples: every distinct tensor storage counted once, plus
    the JSON size of meta/ops, against the bytes of the arrays themselves."""
    seen: set[tuple[int, int]] = set()
    cache = raw = 0
    for s in samples:
        if s is None:
            continue
        cache += _json_bytes(s)
        for t, is_array in _walk_tensors(s):
            if is_array:
                raw += t.nbytes
            st = t.untyped_storage()
            ident = (st.data_ptr(), st.nbytes())
            if ident not in seen:
                seen.add(ident)
                cache += st.nbytes()
    return cache, raw


def compact(sample: Any) -> Any:
    """The sample with every tensor owning exactly its bytes (a crop view would otherwise keep
    the whole uncropped volume alive in the cache)."""
    if isinstance(sample, Image):
        return Image(own_tensor(sample.data), sample.affine, sample.meta, sample.ops)
    if isinstance(sample, torch.Tensor):
        return own_tensor(sample)
    if isinstance(sample, dict):
        return {k: compact(v) for k, v in sample.items()}
    if isinstance(sample, list):
        return [compact(v) for v in sample]
    return sample


# --- /proc measurements ------------------------------------------------------------------------
def process_pss(pid: int | None = None) -> int:
    """Proportional set size of a process in bytes (``/proc/PID/smaps_rollup``)."""
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no Pss line in /proc/{pid}/smaps_rollup")


def total_pss(pids: list[int]) -> int:
    """Sum of the proportional set sizes of ``pids`` (e.g. all DDP ranks): shared pages count once."""
    return sum(process_pss(p) for p in pids)


def mapped_memory(pid: int | None = None, path_prefix: str | os.PathLike = "") -> dict[str, int]:
    """``{"rss", "pss"}`` bytes of a process's mappings of files whose path starts with ``path_prefix``
    (deleted files included): summing ``pss`` over processes gives the memory they hold together."""
    prefix = os.fspath(path_prefix)
    out = {"rss": 0, "pss": 0}
    current = None
    with open(f"/proc/{pid or os.getpid()}/smaps") as fh:
        for line in fh:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split(maxsplit=5)
                current = parts[5].strip() if len(parts) == 6 else ""
            elif current and current.startswith(prefix) and first in ("Rss:", "Pss:"):
                out[first[:-1].lower()] += int(line.split()[1]) * 1024
    return out


class CacheDataset(Dataset):
    """``Dataset`` with the deterministic prefix output of the first ``cache_rate`` of the items
    held in memory (see the module docstring for ``mode``). Built when made, with a progress bar
    (``num_workers`` threads). Under DDP every rank must make it (it synchronises)."""

    def __init__(self, items: Sequence[Any], transform: Transform | None = None, seed: int = 0,
                 image_keys: Sequence[str] | None = None, cache_rate: float = 1.0, mode: str = "auto",
                 num_workers: int = 0, on_error: str = "raise", progress: bool = True) -> None:
        super().__init__(items, transform, seed, image_keys, on_error)
        self.rank, self.world = dist_info()
        if mode == "auto":
            mode = "shared" if self.world > 1 else "local"
        if mode not in ("local", "shared", "partition"):
            raise ValueError(f"mode must be 'auto', 'local', 'shared' or 'partition', got {mode!r}")
        if mode == "local" and self.world > 1:
            raise ValueError(f"mode='local' under DDP would keep one cache copy per rank ({self.world} ranks); "
                             f"use mode='shared' (one copy in shared memory) or 'partition'")
        self.mode = mode
        self.partitioned = mode == "partition"
        self.n_cached = min(len(self.items), max(0, int(round(len(self.items) * float(cache_rate)))))
        self.cache: list[Any] = [None] * self.n_cached
        self.errors: dict[int, str] = {}
        self.mapped_bytes = 0
        self.progress = progress
        self.num_workers = int(num_workers)
        if mode == "shared" and self.world > 1:
            self._build_shared()
        else:
            mine = [i for i in range(self.n_cached) if mode == "local" or i % self.world == self.rank]
            for i, sample in self._build_many(mine):
                self.cache[i] = compact(sample) if sample is not None else None

    # --- building -----------------------------------------------------------------------------
    def _build_one(self, i: int) -> tuple[int, Any]:
        try:
            return i, self.build(i)
        except ItemError as exc:
            self.errors[i] = str(exc)
            log.warning("not cached: %s", exc)
            return i, None

    def _build_many(self, indices: list[int]):
        bar = tqdm(total=len(indices), desc=f"caching (rank {self.rank})", unit="item",
                   disable=not self.progress or self.rank != 0)
        if self.num_workers > 0:
            with ThreadPoolExecutor(self.num_workers) as pool:
                for out in pool.map(self._build_one, indices):
                    bar.update()
                    yield out
        else:
            for i in indices:
                out = self._build_one(i)
                bar.update()
                yield out
        bar.close()

    def _group(self):
        return dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None

    def _build_shared(self) -> None:
        group = self._group()
        token = torch.tensor(list(secrets.token_bytes(12)), dtype=torch.uint8)
        dist.broadcast(token, src=0, group=group)
        folder = shm_root() / f"medcore-cache-{bytes(token.tolist()).hex()}"
        self.shm_folder = folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            mine = [i for i in range(self.n_cached) if i % self.world == self.rank]
            for i, sample in self._build_many(mine):
                if sample is None:
                    atomic_write_text(folder / f"{i}.error.json", json.dumps({"error": self.errors[i]}))
                else:
                    try:
                        atomic_write_bytes(folder / f"{i}.safetensors", sample_to_bytes(sample))
                    except OSError as exc:
                        raise OSError(exc.errno, f"cannot write the shared cache entry of item {i} under {folder} "
                                      f"({exc.strerror}); {folder.parent} is probably too small (containers "
                                      f"default to 64 MB: raise --shm-size), or set MEDCORE_SHM_DIR to a larger "
                                      f"tmpfs, or lower cache_rate") from exc
                    except TypeError as exc:
                        self.errors[i] = f"item {i}: {exc}"
                        atomic_write_text(folder / f"{i}.error.json", json.dumps({"error": self.errors[i]}))
            dist.barrier(group=group)
            for i in range(self.n_cached):
                path = folder / f"{i}.safetensors"
                if path.is_file():
                    self.cache[i], size = map_sample_file(path)
                    self.mapped_bytes += size
                else:
                    err = folder / f"{i}.error.json"
                    self.errors[i] = json.loads(err.read_text())["error"] if err.is_file() else \
                        f"item {i}: no cache entry was written by rank {i % self.world}"
            dist.barrier(group=group)
        finally:
            if self.rank == 0:
                shutil.rmtree(folder, ignore_errors=True)  # mappings stay valid; memory frees on exit

    # --- access -----------------------------------------------------------------------------------
    def prepared(self, index: int) -> Any:
        if index < self.n_cached:
            if index in self.errors:
                raise ItemError(self.errors[index])
            sample = self.cache[index]
            if sample is not None:
                return sample
        return self.build(index)

    def memory_report(self) -> dict[str, float]:
        """Cache bytes vs raw array bytes of the entries held by THIS process (``ratio`` =
        cache/raw). Shared mode counts the mapped files, which exist once per machine."""
        cached = [s for s in self.cache if s is not None]
        cache_bytes, raw = sample_nbytes(cached)
        if self.mode == "shared" and self.world > 1:
            cache_bytes = self.mapped_bytes + sum(_json_bytes(s) for s in cached)
        return {"entries": len(cached), "cache_bytes": cache_bytes, "raw_bytes": raw,
                "ratio": cache_bytes / raw if raw else 1.0}
