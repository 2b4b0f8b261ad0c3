"""Patch dataset over a site's cache, and a loader with worker processes.

Each worker memory-maps the cached arrays itself (a memmap pickled to a worker
would be copied whole). The random stream of sample ``i`` is seeded by
``(seed, i)`` where ``i`` already includes the epoch, so patches are the same
whatever the number of workers or their scheduling.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..transforms.base import Compose
from .cache import CachedCase


class PatchDataset(Dataset):
    def __init__(self, cases: Sequence[CachedCase], transform: Compose, seed: int = 0):
        if not cases:
            raise ValueError("PatchDataset needs at least one cached case")
        self.cases = list(cases)
        self.transform = transform
        self.seed = seed
        self._open: dict[int, dict] = {}  # per process: case -> memory-mapped item

    def __len__(self) -> int:
        return len(self.cases)

    def _item(self, c: int) -> dict:
        if c not in self._open:
            self._open[c] = self.cases[c].load(mmap=True)
        return dict(self._open[c])

    def __getitem__(self, index: int) -> dict:
        c = index % len(self.cases)
        rng = np.random.default_rng([self.seed, index])
        out = self.transform(self._item(c), rng)
        items = out if isinstance(out, list) else [out]
        image = np.stack([np.asarray(it["image"].array, dtype=np.float32) for it in items])
        batch = {"image": torch.from_numpy(image), "case_id": [self.cases[c].case_id] * len(items)}
        if "label" in items[0]:
            label = np.stack([np.asarray(it["label"].array) for it in items]).astype(np.int64)
            batch["label"] = torch.from_numpy(label)
        return batch

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_open"] = {}  # never ship memmaps to workers
        return state


class EpochSampler(Sampler[int]):
    """Indices ``epoch * n + perm(i)``: a fresh, seeded order and fresh patches each epoch."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
                 if self.shuffle else np.arange(self.n))
        return iter((self.epoch * self.n + order).tolist())


def collate_patches(batches: list[dict]) -> dict:
    """Concatenate the patches of several cases into one batch."""
    out = {"image": torch.cat([b["image"] for b in batches]),
           "case_id": [c for b in batches for c in b["case_id"]]}
    if "label" in batches[0]:
        out["label"] = torch.cat([b["label"] for b in batches])
    return out


def patch_loader(dataset: PatchDataset, cases_per_batch: int = 1, num_workers: int = 0,
                 seed: int = 0, shuffle: bool = True) -> tuple[DataLoader, EpochSampler]:
    sampler = EpochSampler(len(dataset), seed, shuffle)
    loader = DataLoader(dataset, batch_size=cases_per_batch, sampler=sampler, num_workers=num_workers,
                        collate_fn=collate_patches, persistent_workers=num_workers > 0,
                        pin_memory=False)
    return loader, sampler
