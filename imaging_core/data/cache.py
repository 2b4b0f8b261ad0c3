"""Preprocessed on-disk cache for one site.

Each case is preprocessed once (load, checks, deterministic transforms) and
stored as .npy files that later processes memory-map, so patch sampling reads
only the voxels it needs. An entry is keyed by the content hash of the image
and label files plus the preprocessing config: changing either gives a new
key, and stale entries are pruned. Entries are built in a temp directory and
renamed into place, so a crash never leaves a half-written entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ImagingError
from ..io import load_volume
from ..io.volume import Volume
from ..transforms.base import Compose
from .checks import check_label, check_pair
from .datalist import Case
from .hashing import HashMemo

CACHE_FORMAT = 1


@dataclass
class CachedCase:
    case_id: str
    split: str
    path: Path
    # the case's label file as the datalist names it: original-space evaluation measures on it
    label_source: Path | None = None

    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    def load(self, mmap: bool = True) -> dict:
        """The preprocessed item: image/label Volumes (memory-mapped) and class indices."""
        mode = "r" if mmap else None
        meta = self.meta()
        affine = np.asarray(meta["affine"])
        vmeta = {**meta["source_meta"], "case_id": self.case_id}
        item = {"image": Volume(np.load(self.path / "image.npy", mmap_mode=mode), affine, vmeta),
                "case_id": self.case_id}
        if (self.path / "label.npy").exists():
            item["label"] = Volume(np.load(self.path / "label.npy", mmap_mode=mode), affine, vmeta)
            idx = np.load(self.path / "class_index.npz")
            item["label_index"] = {int(k[1:]): idx[k] for k in idx.files}
        return item


@dataclass
class CacheReport:
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # case id -> one-line error
    cases: list[CachedCase] = field(default_factory=list)
    seconds: float = 0.0


def class_index(label: np.ndarray, num_classes: int) -> dict[int, np.ndarray]:
    """Flat voxel indices of each class, computed once so samplers never scan the volume."""
    flat = label.reshape(-1)
    order = np.argsort(flat, kind="stable")
    counts = np.bincount(flat, minlength=num_classes)
    dtype = np.int32 if flat.size < 2**31 else np.int64
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return {c: order[bounds[c]:bounds[c + 1]].astype(dtype) for c in range(num_classes)}


class SiteCache:
    def __init__(self, cache_dir: str | os.PathLike, preprocess: Compose, num_classes: int):
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.hashes = HashMemo(self.dir / "input_hashes.json")
        self._config = json.dumps({"format": CACHE_FORMAT, "num_classes": num_classes,
                                   "transforms": preprocess.config()}, sort_keys=True)

    def key(self, case: Case) -> str:
        h = hashlib.sha256(self._config.encode())
        for p in (case.image, case.label):
            h.update(b"|" + (self.hashes.digest(p).encode() if p is not None else b"-"))
        return h.hexdigest()[:24]

    def entry_path(self, case: Case) -> Path:
        return self.dir / f"{case.case_id}-{self.key(case)}"

    def _build_entry(self, case: Case, final: Path) -> None:
        image = load_volume(case.image)
        item = {"image": image}
        if case.label is not None:
            label = load_volume(case.label)
            check_pair(image, label)
            item["label"] = label.replace(check_label(label, self.num_classes))
        out = self.preprocess(item)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=self.dir))
        try:
            np.save(tmp / "image.npy", np.ascontiguousarray(out["image"].array, dtype=np.float32))
            counts = None
            if "label" in out:
                lab = np.ascontiguousarray(out["label"].array)
                np.save(tmp / "label.npy", lab)
                idx = class_index(lab, self.num_classes)
                np.savez(tmp / "class_index.npz", **{f"c{c}": v for c, v in idx.items()})
                counts = {c: int(v.size) for c, v in idx.items()}
            src = {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                   for k, v in image.meta.items() if k in
                   ("source", "format", "original_affine", "original_shape", "original_dtype")}
            meta = {"case_id": case.case_id, "split": case.split, "affine": out["image"].affine.tolist(),
                    "shape": list(out["image"].array.shape), "class_voxels": counts,
                    "source_meta": src, "created": time.time()}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.rename(tmp, final)
            except OSError:
                if not (final / "meta.json").exists():  # not a concurrent builder's finished entry
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def build(self, cases: list[Case], progress: Callable | None = None) -> CacheReport:
        """Make sure every case has an entry; a bad case is reported and skipped."""
        rep = CacheReport()
        t0 = time.perf_counter()
        for case in cases:
            try:
                final = self.entry_path(case)
                if (final / "meta.json").exists():
                    rep.reused.append(case.case_id)
                else:
                    self._build_entry(case, final)
                    rep.built.append(case.case_id)
                rep.cases.append(CachedCase(case.case_id, case.split, final, case.label))
            except ImagingError as e:
                rep.failed[case.case_id] = str(e)
            except (OSError, ValueError, RuntimeError) as e:  # still a bad case, not a crash
                rep.failed[case.case_id] = f"{case.image}: {type(e).__name__}: {e}"
            if progress:
                progress(case.case_id)
        self.hashes.save()
        rep.seconds = time.perf_counter() - t0
        return rep

    def prune(self, keep: list[CachedCase]) -> list[Path]:
        """Remove entries (and abandoned temp dirs) not in ``keep``."""
        keep_names = {c.path.name for c in keep}
        removed = []
        for p in self.dir.iterdir():
            if p.is_dir() and p.name not in keep_names:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed
