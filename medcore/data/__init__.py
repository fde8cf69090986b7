"""Datasets, caches, collation, datalists and loaders (issue 3; ARCHITECTURE rules 6, 8, 9).

Quick start::

    from medcore.data import CacheDataset, load_datalist, make_loader, split_train_val
    train, val = split_train_val(load_datalist("../shared/data/hippocampus"), 0.2, seed=0)
    ds = CacheDataset(train, transform=pipeline, seed=0)          # prefix cached, rest random
    loader = make_loader(ds, batch_size=2, num_workers=2, shuffle=True, seed=0)
    for epoch in range(n):
        loader.set_epoch(epoch)
        for batch in loader: ...                                    # batch["image"]: (B*N, C, ...)
"""

from medcore.data.cache import CacheDataset, mapped_memory, process_pss, sample_nbytes, total_pss
from medcore.data.collate import collate, decollate
from medcore.data.datalist import case_id, fold_of, kfold, load_datalist, split_train_val
from medcore.data.dataset import Dataset, ItemError, load_item, split_transform
from medcore.data.loader import EpochLoader, EpochSampler, make_loader, seed_worker
from medcore.data.persistent import PersistentDataset, file_digest, sample_from_bytes, sample_to_bytes
from medcore.data.volume import load_series_image, load_volume

__all__ = [
    "CacheDataset", "mapped_memory", "process_pss", "sample_nbytes", "total_pss",
    "collate", "decollate",
    "case_id", "fold_of", "kfold", "load_datalist", "split_train_val",
    "Dataset", "ItemError", "load_item", "split_transform",
    "EpochLoader", "EpochSampler", "make_loader", "seed_worker",
    "PersistentDataset", "file_digest", "sample_from_bytes", "sample_to_bytes",
    "load_series_image", "load_volume",
]
