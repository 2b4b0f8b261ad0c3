"""Random patch samplers: positive/negative and class-balanced.

Each call returns a list of ``num_samples`` dicts whose volumes have exactly
``size`` spatial shape. Patch centres are voxels drawn uniformly from the
chosen pool (a class, or foreground/background). Pools come from
``data["label_index"]`` (flat voxel indices per class, precomputed by the
site cache) when present, so sampling never scans the volume; otherwise they
are computed from the label. As in MONAI, a centre is moved just enough for
the patch to fit inside the volume; an axis shorter than the patch is padded
symmetrically (images with ``pad_value``, labels with 0). Affines are shifted
to each patch's origin. Patches are fresh in-memory arrays, even when the
input is a read-only memory map.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from .base import DEFAULT_KEYS, Data, RandomTransform, is_label_key
from .crop_pad import _triple, crop_or_pad_array, shifted_affine

# Background draws are tried by rejection (uniform over the pool, keep the
# first voxel above the image threshold: still uniform over the valid ones)
# this many times before the valid pool is computed in full.
_REJECTION_TRIES = 64


def patch_start(centre: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Patch origin for ``centre``: clamped inside the volume, centred padding where too small.

    Same box as MONAI's ``correct_crop_centers`` + ``SpatialCrop(roi_center)``
    when the volume is at least the patch size.
    """
    c = np.asarray(centre, dtype=np.int64)
    s = np.asarray(size, dtype=np.int64)
    n = np.asarray(shape, dtype=np.int64)
    inside = np.clip(c - s // 2, 0, np.maximum(n - s, 0))
    return np.where(n >= s, inside, -((s - n) // 2))


def _usable_index(data: Data, shape) -> dict[int, np.ndarray] | None:
    idx = data.get("label_index")
    if not idx:
        return None
    # an index built for another grid (label cropped/resampled after caching) is unusable
    if sum(int(np.size(v)) for v in idx.values()) != int(np.prod(shape)):
        return None
    return idx


class _PatchSampler(RandomTransform):
    """Shared cropping; subclasses choose the centres."""

    prob = 1.0
    random = True

    def _init_common(self, size, num_samples, keys, label_key, image_key, pad_value):
        self.size = _triple(size, "size")
        if any(s <= 0 for s in self.size):
            raise ValueError(f"patch size must be positive, got {size!r}")
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
        self.num_samples = int(num_samples)
        self.keys = tuple(keys)
        self.label_key = label_key
        self.image_key = image_key
        if not (pad_value == "min" or isinstance(pad_value, (int, float))):
            raise ValueError(f"pad_value must be a number or 'min', got {pad_value!r}")
        self.pad_value = pad_value

    def _label(self, data: Data):
        lab = data.get(self.label_key)
        if lab is None:
            raise ValueError(f"{type(self).__name__} needs a {self.label_key!r} volume to sample from")
        return lab

    def centres(self, data: Data, rng: np.random.Generator) -> list[tuple[tuple[int, int, int], int]]:
        """``num_samples`` (centre voxel, pool) pairs, before clamping."""
        raise NotImplementedError  # pragma: no cover

    def apply(self, data: Data, rng: np.random.Generator) -> list[Data]:
        return [self.crop(data, c) for c, _ in self.centres(data, rng)]

    def crop(self, data: Data, centre: Sequence[int]) -> Data:
        """The patch around ``centre`` as a new item (other keys copied, the class index dropped)."""
        shape = self._label(data).spatial_shape
        start = patch_start(centre, self.size, shape)
        end = start + np.asarray(self.size)
        padded = bool(np.any(start < 0) or np.any(end > np.asarray(shape)))
        out = {k: v for k, v in data.items() if k != "label_index"}
        for k in self.present(data):
            vol = data[k]
            if vol.spatial_shape != shape:
                raise ValueError(f"{k!r} has shape {vol.spatial_shape}, label has {shape}")
            value = 0
            if not is_label_key(k) and padded:
                value = self._pad_value(vol.array, start, end)
            arr = crop_or_pad_array(vol.array, start, self.size, pad_value=value)
            # np.array: always a private, writable, plain ndarray (never a memmap view)
            out[k] = vol.replace(array=np.array(arr), affine=shifted_affine(vol.affine, start),
                                 patch_start=tuple(int(s) for s in start))
        return out

    def _pad_value(self, arr, start, end):
        if self.pad_value != "min":
            return self.pad_value
        lo = np.maximum(start, 0)
        hi = np.minimum(end, arr.shape[1:])
        return arr[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].min()


class RandCropByPosNeg(_PatchSampler):
    """Patches centred on foreground with probability ``pos / (pos + neg)``, else on background.

    Foreground: ``label > 0``. Background: ``label == 0`` and any image channel
    ``> image_threshold`` (so patches are not centred in air). If one pool is
    empty every centre comes from the other (MONAI's behaviour).
    """

    def __init__(self, size, pos: float = 1.0, neg: float = 1.0, num_samples: int = 4,
                 image_threshold: float = 0.0, keys: Sequence[str] = DEFAULT_KEYS,
                 label_key: str = "label", image_key: str | None = "image", pad_value=0.0):
        if pos < 0 or neg < 0 or pos + neg == 0:
            raise ValueError(f"pos and neg must be non-negative and not both 0, got {pos}, {neg}")
        self._init_common(size, num_samples, keys, label_key, image_key, pad_value)
        self.pos = float(pos)
        self.neg = float(neg)
        self.image_threshold = float(image_threshold)

    def centres(self, data, rng):
        lab = self._label(data)
        shape = lab.spatial_shape
        larr = lab.array
        img = data.get(self.image_key) if self.image_key else None
        iarr = img.array if img is not None else None
        idx = _usable_index(data, shape)

        if idx is not None:
            fg_pools = [np.asarray(v) for c, v in sorted(idx.items()) if c > 0 and np.size(v)]
            bg_pool = np.asarray(idx.get(0, np.zeros(0, np.int64)))
        else:
            fg_pools = [np.flatnonzero(np.any(np.asarray(larr) > 0, axis=0))]
            bg_pool = None  # uniform over the whole grid, label checked per draw
        fg_pools = [p for p in fg_pools if p.size]
        fg_cum = np.cumsum([p.size for p in fg_pools])
        fg_n = int(fg_cum[-1]) if fg_pools else 0
        bg_full: np.ndarray | None = None  # the valid background pool, computed only if needed

        def is_bg(v):
            if larr[(slice(None),) + v].any():
                return False
            return iarr is None or bool(np.any(iarr[(slice(None),) + v] > self.image_threshold))

        def draw_bg():
            nonlocal bg_full
            if bg_full is None:
                n = bg_pool.size if bg_pool is not None else int(np.prod(shape))
                if n:
                    for _ in range(_REJECTION_TRIES):
                        j = int(rng.integers(n))
                        f = int(bg_pool[j]) if bg_pool is not None else j
                        v = np.unravel_index(f, shape)
                        if is_bg(v):
                            return v
                bg_full = self._valid_background(larr, iarr, shape, bg_pool)
            if bg_full.size == 0:
                return None
            return np.unravel_index(int(bg_full[rng.integers(bg_full.size)]), shape)

        def draw_fg():
            if fg_n == 0:
                return None
            j = int(rng.integers(fg_n))
            p = int(np.searchsorted(fg_cum, j, side="right"))
            off = j - (int(fg_cum[p - 1]) if p else 0)
            return np.unravel_index(int(fg_pools[p][off]), shape)

        pos_ratio = self.pos / (self.pos + self.neg)
        out = []
        for _ in range(self.num_samples):
            want_fg = rng.random() < pos_ratio
            v = draw_fg() if want_fg else draw_bg()
            kind = 1 if want_fg else 0
            if v is None:  # that pool is empty: take the other one
                v = draw_bg() if want_fg else draw_fg()
                kind = 1 - kind
                if v is None:
                    raise ValueError("RandCropByPosNeg: no foreground and no background voxel to centre on")
                warnings.warn(f"RandCropByPosNeg: no {'foreground' if want_fg else 'background'} "
                              "voxels in this case, sampling the other pool", RuntimeWarning,
                              stacklevel=2)
            v = tuple(int(x) for x in v)
            if idx is not None and bool(larr[(slice(None),) + v].any()) != bool(kind):
                # the stored index does not describe this label: recompute without it
                warnings.warn("label_index does not match the label; recomputing", RuntimeWarning,
                              stacklevel=2)
                return self.centres({k: x for k, x in data.items() if k != "label_index"}, rng)
            out.append((v, kind))
        return out

    def _valid_background(self, larr, iarr, shape, bg_pool):
        if bg_pool is not None:
            ok = np.ones(bg_pool.size, dtype=bool)
            if iarr is not None:
                coords = np.unravel_index(bg_pool, shape)
                ok = np.any(np.asarray(iarr)[(slice(None),) + coords] > self.image_threshold, axis=0)
            return bg_pool[ok]
        mask = ~np.any(np.asarray(larr) > 0, axis=0)
        if iarr is not None:
            mask &= np.any(np.asarray(iarr) > self.image_threshold, axis=0)
        return np.flatnonzero(mask)


class RandCropByLabelClasses(_PatchSampler):
    """Class-balanced patches: pick a class by ``ratios``, then a voxel of that class as centre.

    ``ratios`` defaults to equal weights over all ``num_classes`` classes
    (background included, as MONAI). Classes absent from the case are skipped
    with a warning and the remaining ratios renormalised.
    """

    def __init__(self, size, num_classes: int, ratios: Sequence[float] | None = None,
                 num_samples: int = 4, keys: Sequence[str] = DEFAULT_KEYS, label_key: str = "label",
                 image_key: str | None = "image", pad_value=0.0, warn: bool = True):
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
        self._init_common(size, num_samples, keys, label_key, image_key, pad_value)
        self.num_classes = int(num_classes)
        if ratios is None:
            ratios = [1.0] * self.num_classes
        ratios = [float(r) for r in ratios]
        if len(ratios) != self.num_classes:
            raise ValueError(f"ratios has {len(ratios)} entries for {self.num_classes} classes")
        if any(r < 0 for r in ratios) or sum(ratios) == 0:
            raise ValueError(f"ratios must be non-negative and not all 0, got {ratios}")
        self.ratios = tuple(ratios)
        self.warn = bool(warn)

    def centres(self, data, rng):
        lab = self._label(data)
        shape = lab.spatial_shape
        larr = lab.array
        idx = _usable_index(data, shape)
        if idx is not None:
            counts = np.array([np.size(idx.get(c, ())) for c in range(self.num_classes)])
        else:
            flat = np.asarray(larr).reshape(-1) if larr.shape[0] == 1 else np.asarray(larr).argmax(0).ravel()
            counts = np.bincount(flat.astype(np.int64), minlength=self.num_classes)[:self.num_classes]
        ratios = np.asarray(self.ratios, dtype=np.float64)
        absent = [c for c in range(self.num_classes) if counts[c] == 0 and ratios[c] > 0]
        if absent and self.warn:
            warnings.warn(f"RandCropByLabelClasses: classes {absent} absent from this case; skipped",
                          RuntimeWarning, stacklevel=2)
        ratios[counts == 0] = 0.0
        if ratios.sum() == 0:
            raise ValueError("RandCropByLabelClasses: no class with a positive ratio is present")
        p = ratios / ratios.sum()
        pools: dict[int, np.ndarray] = {}
        out = []
        for _ in range(self.num_samples):
            c = int(rng.choice(self.num_classes, p=p))
            if c not in pools:
                pools[c] = (np.asarray(idx[c]) if idx is not None else
                            np.flatnonzero(self._class_mask(larr, c)))
            v = tuple(int(x) for x in np.unravel_index(int(pools[c][rng.integers(pools[c].size)]), shape))
            if idx is not None and self._class_at(larr, v) != c:
                warnings.warn("label_index does not match the label; recomputing", RuntimeWarning,
                              stacklevel=2)
                return self.centres({k: x for k, x in data.items() if k != "label_index"}, rng)
            out.append((v, c))
        return out

    @staticmethod
    def _class_mask(larr, c: int) -> np.ndarray:
        a = np.asarray(larr)
        return a[0] == c if a.shape[0] == 1 else a.argmax(0) == c

    @staticmethod
    def _class_at(larr, v) -> int:
        col = np.asarray(larr[(slice(None),) + v])
        return int(col[0]) if col.size == 1 else int(col.argmax())
