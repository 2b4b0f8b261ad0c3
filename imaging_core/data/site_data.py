"""One site's data, end to end: datalist -> cache -> patch loader.

This is what a site worker (and `fedvox train`) holds across rounds.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..config import AugmentTable, PreprocessTable, SamplingTable
from ..transforms.presets import build_preprocess, build_train_transforms
from .cache import CacheReport, CachedCase, SiteCache
from .datalist import load_datalist
from .patch_dataset import PatchDataset, patch_loader


class SiteData:
    def __init__(self, datalist_path: str | os.PathLike, cache_dir: str | os.PathLike,
                 preprocess: PreprocessTable, sampling: SamplingTable, augment: AugmentTable, modality: str = "CT",
                 seed: int = 0):
        self.datalist = load_datalist(datalist_path)
        self.num_classes = self.datalist.num_classes
        self.preprocess = build_preprocess(preprocess, modality)
        self.train_transforms = build_train_transforms(sampling, augment, self.num_classes)
        self.cache = SiteCache(Path(cache_dir), self.preprocess, self.num_classes)
        self.seed = seed
        self.report: CacheReport | None = None

    def prepare(self, progress=None, prune: bool = True) -> CacheReport:
        """Build (or reuse) the cache for every case; bad cases are skipped and reported."""
        self.report = self.cache.build(self.datalist.cases, progress=progress)
        if prune:
            self.cache.prune(self.report.cases)
        return self.report

    def cases(self, split: str) -> list[CachedCase]:
        if self.report is None:
            self.prepare()
        return [c for c in self.report.cases if c.split == split]

    def train_loader(self, cases_per_batch: int = 1, num_workers: int = 0):
        ds = PatchDataset(self.cases("training"), self.train_transforms, seed=self.seed)
        return patch_loader(ds, cases_per_batch=cases_per_batch, num_workers=num_workers, seed=self.seed)
