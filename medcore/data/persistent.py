"""On-disk cache of the deterministic prefix: ``PersistentDataset``, the sample file format and
content hashing (ARCHITECTURE rules 8 and 9).

One cache entry = one safetensors file ``<key>.safetensors``. Tensors (image data, affines, label
indices) are safetensors tensors; everything else (meta, ops, the sample's structure) is JSON in
the safetensors header metadata, together with the key and a blake2b checksum over the JSON and
every tensor byte. Nothing is unpickled on load. A file that is truncated, has a bad header, the
wrong key or a checksum mismatch is reported, deleted and rebuilt, never returned.

The key is ``blake2b(format version, prefix config, content digest of every input file, other item
values)``: editing an input file's bytes or any parameter of the prefix gives a new key (a miss),
and nothing else does. File digests are blake2b over the bytes in 1 MiB chunks; a small JSON index
(``hash_index.json``) remembers them by (path, size, mtime_ns, ctime_ns, inode) so an unchanged
file is not re-read on the next run. ``ctime`` cannot be set by ``touch``/``utime``, so any write to
a file invalidates its index entry; a file changed within a second of being hashed is never indexed.

``map_sample_file`` memory-maps an entry instead of reading it (``PersistentDataset(mmap=True)`` and
``CacheDataset``'s shared mode use it), so processes reading the same entries share their pages.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from tqdm.auto import tqdm

from medcore.data.dataset import Dataset, ItemError, Transform, describe_item, image_keys_of
from medcore.io import Image
from medcore.transforms.crop_pad import LabelIndices
from medcore.utils.atomic import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
CHUNK = 1 << 20


# --- sample <-> (tensors, JSON layout) ---------------------------------------------------------
def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray | torch.Tensor):
        return v.tolist()
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if isinstance(v, tuple | set):
        return list(v)
    raise TypeError(f"value of type {type(v).__name__} is not JSON-serialisable")


def to_json(v: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) used for layouts and cache keys."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"), default=_json_default)


def own_tensor(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU tensor owning exactly its bytes (views of larger storages are copied)."""
    t = t.detach().cpu().contiguous()
    if t.untyped_storage().nbytes() != t.nbytes or t.storage_offset() != 0:
        t = t.clone()
    return t


def encode_sample(sample: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split a sample (Image, dict, list, tensor, JSON value, LabelIndices) into named tensors and a
    JSON-able layout that ``decode_sample`` turns back into an equal sample."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v: Any, path: str) -> Any:
        if isinstance(v, Image):
            tensors[f"{path}.data"] = own_tensor(v.data)
            tensors[f"{path}.affine"] = own_tensor(v.affine)
            try:
                meta, ops = json.loads(to_json(v.meta)), json.loads(to_json(v.ops))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"sample entry {path!r}: Image meta/ops must be JSON-able to be cached ({exc})") \
                    from exc
            return {"t": "image", "p": path, "meta": meta, "ops": ops}
        if isinstance(v, LabelIndices):
            parts = v.to_tensors()
            for name, t in parts.items():
                tensors[f"{path}.{name}"] = own_tensor(t)
            return {"t": "label_indices", "p": path, "names": sorted(parts)}
        if isinstance(v, torch.Tensor):
            tensors[path] = own_tensor(v)
            return {"t": "tensor", "p": path}
        if isinstance(v, np.ndarray):
            tensors[path] = own_tensor(torch.from_numpy(np.ascontiguousarray(v)))
            return {"t": "ndarray", "p": path}
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise TypeError(f"sample entry {path!r}: dict keys must be strings to be cached")
            return {"t": "dict", "v": {k: enc(x, f"{path}/{k}") for k, x in v.items()}}
        if isinstance(v, list | tuple):
            return {"t": "list", "v": [enc(x, f"{path}/{i}") for i, x in enumerate(v)]}
        if v is None or isinstance(v, bool | int | float | str):
            return {"t": "json", "v": v}
        if isinstance(v, os.PathLike):
            return {"t": "json", "v": os.fspath(v)}
        if isinstance(v, np.generic):
            return {"t": "json", "v": v.item()}
        raise TypeError(f"sample entry {path!r} of type {type(v).__name__} cannot be cached (only Images, "
                        f"tensors, arrays, label indices and JSON values); drop it from the cached prefix")

    return tensors, enc(sample, "s")


def decode_sample(layout: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of ``encode_sample``."""
    t = layout["t"]
    if t == "image":
        p = layout["p"]
        return Image(tensors[f"{p}.data"], tensors[f"{p}.affine"], layout["meta"], layout["ops"])
    if t == "label_indices":
        p = layout["p"]
        return LabelIndices.from_tensors({n: tensors[f"{p}.{n}"] for n in layout["names"]})
    if t == "tensor":
        return tensors[layout["p"]]
    if t == "ndarray":
        return tensors[layout["p"]].numpy()
    if t == "dict":
        return {k: decode_sample(v, tensors) for k, v in layout["v"].items()}
    if t == "list":
        return [decode_sample(v, tensors) for v in layout["v"]]
    if t == "json":
        return layout["v"]
    raise ValueError(f"unknown layout entry type {t!r}")


def _checksum(layout_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.blake2b(layout_json.encode(), digest_size=16)
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(cast(Any, t.contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def sample_to_bytes(sample: Any, key: str = "") -> bytes:
    """A safetensors file holding ``sample`` (tensors + JSON layout, key and checksum in the header)."""
    tensors, layout = encode_sample(sample)
    layout_json = to_json(layout)
    meta = {"medcore_cache": str(CACHE_FORMAT), "key": key, "layout": layout_json,
            "checksum": _checksum(layout_json, tensors)}
    return safetensors.torch.save(tensors, metadata=meta)


def read_header(buf: bytes | memoryview) -> tuple[dict, int]:
    """``(header, data_start)`` of a safetensors buffer; raises ValueError when malformed."""
    if len(buf) < 8:
        raise ValueError(f"file is {len(buf)} bytes, too short for a safetensors header")
    n = int.from_bytes(bytes(buf[:8]), "little")
    if n <= 0 or 8 + n > len(buf):
        raise ValueError(f"header length {n} does not fit a file of {len(buf)} bytes (truncated?)")
    try:
        header = json.loads(bytes(buf[8:8 + n]))
    except ValueError as exc:
        raise ValueError(f"header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict) or "__metadata__" not in header:
        raise ValueError("header has no __metadata__; not a medcore cache file")
    return header, 8 + n


def sample_from_bytes(buf: bytes, key: str | None = None) -> Any:
    """Decode and VERIFY a ``sample_to_bytes`` buffer; ValueError on any mismatch or damage."""
    header, _ = read_header(buf)
    meta = header["__metadata__"]
    if meta.get("medcore_cache") != str(CACHE_FORMAT):
        raise ValueError(f"cache format {meta.get('medcore_cache')!r} is not {CACHE_FORMAT}")
    if key is not None and meta.get("key") != key:
        raise ValueError(f"file holds key {meta.get('key')!r}, expected {key!r}")
    try:
        tensors = safetensors.torch.load(buf)
    except Exception as exc:  # safetensors raises its own error types for damaged buffers
        raise ValueError(f"tensors unreadable ({type(exc).__name__}: {exc})") from exc
    if _checksum(meta["layout"], tensors) != meta.get("checksum"):
        raise ValueError("checksum mismatch (corrupt file)")
    return decode_sample(json.loads(meta["layout"]), tensors)


SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


def map_sample_file(path: str | os.PathLike, key: str | None = None, verify: bool = False) -> tuple[Any, int]:
    """Memory-map a ``sample_to_bytes`` file -> ``(sample, file bytes)``: its tensors are views of a
    private (copy-on-write) mapping, so every process mapping the file shares the OS page cache.

    With ``verify`` the format, ``key`` and checksum are checked (reading every page once); any
    damage is a ValueError, as in ``sample_from_bytes``.
    """
    size = os.path.getsize(path)
    try:
        buf = torch.from_file(os.fspath(path), shared=False, size=size, dtype=torch.uint8)
        header, start = read_header(memoryview(cast(Any, buf.numpy())))
        meta = header.pop("__metadata__")
        tensors = {}
        for name, info in header.items():
            begin, end = info["data_offsets"]
            if not 0 <= begin <= end <= size - start:
                raise ValueError(f"tensor {name!r} lies outside the file (truncated?)")
            raw = buf[start + begin: start + end]
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            try:
                t = raw.view(dtype)
            except RuntimeError:  # misaligned: copy (never happens for files written by safetensors)
                t = raw.clone().view(dtype)
            tensors[name] = t.reshape(info["shape"])
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{os.fspath(path)} is not a readable cache entry ({type(exc).__name__}: {exc})") from exc
    if verify:
        if meta.get("medcore_cache") != str(CACHE_FORMAT):
            raise ValueError(f"cache format {meta.get('medcore_cache')!r} is not {CACHE_FORMAT}")
        if key is not None and meta.get("key") != key:
            raise ValueError(f"file holds key {meta.get('key')!r}, expected {key!r}")
        if _checksum(meta.get("layout", ""), tensors) != meta.get("checksum"):
            raise ValueError("checksum mismatch (corrupt file)")
    return decode_sample(json.loads(meta["layout"]), tensors), size


# --- content hashing -----------------------------------------------------------------------------
def file_digest(path: str | os.PathLike) -> str:
    """blake2b (128-bit) hex digest of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class HashIndex:
    """File digests remembered by (path, size, mtime_ns, ctime_ns, inode) in a JSON file."""

    def __init__(self, path: Path | None, settle_ns: int = 1_000_000_000) -> None:
        self.path = path
        self.settle_ns = int(settle_ns)  # a file changed more recently than this is not indexed
        self.entries: dict[str, dict] = {}
        self.dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text())
                if isinstance(data, dict) and data.get("format") == CACHE_FORMAT:
                    self.entries = dict(data.get("files", {}))
            except (OSError, ValueError):
                log.warning("hash index %s unreadable; it will be rebuilt", path)

    def digest(self, path: str | os.PathLike) -> str:
        name = os.path.abspath(os.fspath(path))
        st = os.stat(name)
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.entries.get(name)
        if entry is not None and entry["sig"] == sig:
            return entry["digest"]
        digest = file_digest(name)
        if self.path is not None and time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) >= self.settle_ns:
            self.entries[name] = {"sig": sig, "digest": digest}
            self.dirty = True
        return digest

    def tree_digest(self, folder: str | os.PathLike) -> str:
        """Digest of a folder (a DICOM series): relative names and bytes of every file, sorted."""
        h = hashlib.blake2b(digest_size=16)
        root = Path(folder)
        for p in sorted(q for q in root.rglob("*") if q.is_file()):
            h.update(f"{p.relative_to(root).as_posix()}\0{self.digest(p)}\0".encode())
        return h.hexdigest()

    def save(self) -> None:
        if self.path is not None and self.dirty:
            atomic_write_text(self.path, to_json({"format": CACHE_FORMAT, "files": self.entries}))
            self.dirty = False


def transform_config(transform: Transform | None) -> Any:
    """JSON config of the cached prefix (part of every key); a transform must expose ``config()``."""
    if transform is None:
        return None
    if not hasattr(transform, "config"):
        raise TypeError(f"{type(transform).__name__} has no config(); a cached prefix must describe its parameters "
                        f"so that changing one invalidates the cache")
    return cast(Any, transform).config()


def item_key(item: Any, image_keys: Sequence[str] | None, prefix_config: Any, index: HashIndex) -> str:
    """Content address of ``prefix(load(item))``: hash of the prefix config, input file bytes and other values."""
    if isinstance(item, Image):
        item = {"image": item}
    files, values = {}, {}
    keys = image_keys_of(item, image_keys)
    for k, v in item.items():
        if k in keys and isinstance(v, Image):
            files[k] = _checksum(to_json({"meta": v.meta, "ops": v.ops}), {"data": v.data, "affine": v.affine})
        elif k in keys:
            try:
                files[k] = index.tree_digest(v) if os.path.isdir(v) else index.digest(v)
            except OSError as exc:
                raise ItemError(f"key {k!r}: cannot read {os.fspath(v)} ({exc.strerror or exc}); check the path") \
                    from exc
        elif isinstance(v, torch.Tensor | np.ndarray):
            values[k] = _checksum("", {"v": torch.as_tensor(v)})
        else:
            values[k] = v
    payload = to_json({"format": CACHE_FORMAT, "prefix": prefix_config, "files": files, "values": values})
    return hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()


# --- the dataset ---------------------------------------------------------------------------------
class PersistentDataset(Dataset):
    """``Dataset`` whose deterministic prefix output is cached in ``cache_dir`` (see module docstring).

    Keys are computed once, when the dataset is made (input files are hashed then, with a progress
    bar); edit an input afterwards and make a new dataset. ``keys=`` skips the hashing when the keys
    are already known (say, listed by the process that built the cache). ``stats`` counts hits,
    misses and rebuilt (damaged) entries in this process; ``prune()`` deletes entries no current
    item uses.

    With ``mmap=True`` an entry is memory-mapped and verified once per process and then served from
    the mapping: DDP ranks and loader workers reading the same cache share the OS page cache instead
    of each holding a copy (treat the returned tensors as read-only; a write copies the page).
    """

    def __init__(self, items: Sequence[Any], transform: Transform | None, cache_dir: str | os.PathLike,
                 seed: int = 0, image_keys: Sequence[str] | None = None, on_error: str = "raise",
                 hash_index: bool = True, progress: bool = True, mmap: bool = False,
                 keys: Sequence[str] | None = None) -> None:
        super().__init__(items, transform, seed, image_keys, on_error)
        self.cache_dir = Path(cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.mmap = bool(mmap)
        self._mapped: dict[int, Any] = {}
        self.keys: list[str | None] = []
        self.key_errors: dict[int, str] = {}
        if keys is not None:  # known keys (e.g. a manifest written by the process that built the cache)
            if len(keys) != len(self.items):
                raise ValueError(f"{len(keys)} keys for {len(self.items)} items; pass one key per item")
            transform_config(self.prefix)
            self.keys = [str(k) for k in keys]
        else:
            index = HashIndex(self.cache_dir / "hash_index.json" if hash_index else None)
            config = transform_config(self.prefix)
            for i, item in enumerate(tqdm(self.items, desc="hashing inputs", unit="item",
                                          disable=not progress or len(self.items) < 50)):
                try:
                    self.keys.append(item_key(item, self.image_keys, config, index))
                except (ItemError, KeyError, TypeError) as exc:
                    self.keys.append(None)
                    self.key_errors[i] = f"item {i} ({describe_item(item)}): {exc}"
            index.save()
        self.stats = {"hits": 0, "misses": 0, "rebuilt": 0}

    def __getstate__(self) -> dict:  # a process that unpickles the dataset maps the files itself
        return {**self.__dict__, "_mapped": {}}

    def entry_path(self, index: int) -> Path | None:
        """The cache file of item ``index`` (None when its inputs could not be hashed)."""
        key = self.keys[index]
        return None if key is None else self.cache_dir / f"{key}.safetensors"

    def prepared(self, index: int) -> Any:
        if index in self.key_errors:
            raise ItemError(self.key_errors[index])
        if index in self._mapped:
            self.stats["hits"] += 1
            return self._mapped[index]
        key = self.keys[index]
        path = self.entry_path(index)
        assert key is not None and path is not None  # unhashable items were refused by key_errors above
        try:
            sample = self._read(index)
            self.stats["hits"] += 1
            return sample
        except FileNotFoundError:
            self.stats["misses"] += 1
        except ValueError as exc:
            log.warning("cache file %s is damaged (%s); rebuilding it", path, exc)
            self.stats["rebuilt"] += 1
            path.unlink(missing_ok=True)
        sample = self.build(index)
        try:
            atomic_write_bytes(path, sample_to_bytes(sample, key))
        except TypeError as exc:
            raise ItemError(f"item {index} ({describe_item(self.items[index])}): {exc}") from exc
        return self._read(index) if self.mmap else sample

    def _read(self, index: int) -> Any:
        """The verified entry of item ``index``: read into memory, or mapped once per process (``mmap``)."""
        path, key = self.entry_path(index), self.keys[index]
        assert key is not None and path is not None
        if not self.mmap:
            return sample_from_bytes(path.read_bytes(), key)
        sample, _ = map_sample_file(path, key, verify=True)
        self._mapped[index] = sample
        return sample

    def prune(self) -> int:
        """Delete cache files that no item of this dataset uses; returns how many."""
        keep = {f"{k}.safetensors" for k in self.keys if k is not None}
        removed = 0
        for p in self.cache_dir.glob("*.safetensors"):
            if p.name not in keep:
                p.unlink(missing_ok=True)
                removed += 1
        return removed
