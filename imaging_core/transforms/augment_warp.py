"""nnU-Net v2's spatial augmentation: rotation, scaling and elastic deformation as ONE
resampling of the patch, read from the whole case when the sampler kept it.

nnU-Net crops a larger patch first so rotated or zoomed-out content is real
anatomy, not the patch edge repeated; here ``WithSource`` keeps, in each patch,
the case volumes it was cut from (memory maps: no copy), and ``RandSpatial``
reads the rotated patch straight from the case (only the bounding box it needs
is sliced), then drops them. Patch affines are world-consistent, so flips and
quarter turns applied before stay correct (intensity changes would not: they come
after). The new affine carries the rotation and scaling; the elastic displacement
is local and left out of it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..io.volume import Volume
from .augment_spatial import (_pair, _spatial_keys, _triple_f, affine_index_map, draw_around_one, sample_grid,
                              sampling_grid)
from .base import DEFAULT_KEYS, Data, RandomTransform, Transform, is_label_key

SOURCE_KEY = "_source"  # item key: {volume key: the whole case Volume the patch was cut from}


def elastic_field(shape: Sequence[int], spacing: float, magnitude: float,
                  rng: np.random.Generator) -> np.ndarray:
    """A smooth random displacement (3, *shape) in voxels, largest component ``magnitude``.

    Random vectors on a coarse control grid ``spacing`` voxels apart, trilinearly
    upsampled: smooth at that scale and far cheaper than Gaussian-filtering a
    full-resolution noise field (nnU-Net's and MONAI's way), which matters on CPU.
    """
    nodes = [max(2, int(np.ceil((n - 1) / max(spacing, 1.0))) + 1) for n in shape]
    coarse = torch.from_numpy(rng.standard_normal((1, 3, *nodes), dtype=np.float32))
    field = torch.nn.functional.interpolate(coarse, size=tuple(int(n) for n in shape), mode="trilinear",
                                            align_corners=True)[0]
    peak = float(field.abs().max())
    return (field * (magnitude / peak if peak > 0 else 0.0)).numpy()


class RandSpatial(RandomTransform):
    """nnU-Net v2's spatial augmentation as ONE resampling of the patch.

    Independently: rotation (each axis ``U(-r, r)`` radians) with ``rotate_prob``,
    isotropic scaling (``draw_around_one`` over ``scale_range``; above 1 samples a
    larger region, content shrinks) with ``scale_prob``, elastic deformation
    (``elastic_field`` with spacing and magnitude drawn from their ranges, voxels)
    with ``elastic_prob``. ``prob`` gates the whole transform. When no part fires
    the item is returned untouched (no resampling cost). With ``SOURCE_KEY`` in the
    item the content is read from the case; the key is always removed.
    """

    def __init__(self, prob: float = 1.0, rotate_prob: float = 0.2, rotate_range=0.5236,
                 scale_prob: float = 0.2, scale_range=(0.7, 1.4), elastic_prob: float = 0.0,
                 elastic_spacing=(12.0, 16.0), elastic_magnitude=(0.0, 3.0),
                 padding_mode: str = "border", keys: Sequence[str] = DEFAULT_KEYS):
        if padding_mode not in ("border", "zeros", "reflection"):
            raise ValueError(f"padding_mode must be border, zeros or reflection, got {padding_mode!r}")
        self.prob = float(prob)
        self.rotate_prob, self.scale_prob, self.elastic_prob = float(rotate_prob), float(scale_prob), float(elastic_prob)
        self.rotate_range = tuple(abs(x) for x in _triple_f(rotate_range, "rotate_range"))
        self.scale_range = _pair(scale_range, "scale_range", positive=True)
        self.elastic_spacing = _pair(elastic_spacing, "elastic_spacing", positive=True)
        self.elastic_magnitude = _pair(elastic_magnitude, "elastic_magnitude")
        self.padding_mode = padding_mode
        self.keys = tuple(keys)

    def __call__(self, data: Data, rng: np.random.Generator | None = None) -> Data:
        sources = data.get(SOURCE_KEY)
        if sources is not None:
            data = {k: v for k, v in data.items() if k != SOURCE_KEY}
        return self._call(data, sources, rng if rng is not None else np.random.default_rng())

    def _call(self, data: Data, sources, rng: np.random.Generator) -> Data:
        if self.prob < 1.0 and rng.random() >= self.prob:
            return data
        return self.apply(data, rng, sources)

    def apply(self, data: Data, rng: np.random.Generator, sources: dict | None = None) -> Data:
        keys = _spatial_keys(self, data)
        if not keys:
            return data
        # every draw is made whatever fires, so later transforms see the same stream
        u_rot, u_scale, u_el = rng.random(3)
        angles = rng.uniform(-np.asarray(self.rotate_range), np.asarray(self.rotate_range))
        scale = draw_around_one(rng, *self.scale_range)
        spacing = float(rng.uniform(*self.elastic_spacing))
        magnitude = float(rng.uniform(*self.elastic_magnitude))
        angles = angles if u_rot < self.rotate_prob else np.zeros(3)
        scale = scale if u_scale < self.scale_prob else 1.0
        field = None
        if u_el < self.elastic_prob and magnitude > 0:
            field = elastic_field(data[keys[0]].spatial_shape, spacing, magnitude, rng)
        if field is None and not angles.any() and scale == 1.0:
            return data
        return self.warp(data, angles, (scale,) * 3, field, sources)

    def warp(self, data: Data, angles, scales, displacement: np.ndarray | None = None,
             sources: dict | None = None) -> Data:
        """Warp every key with one draw; ``sources`` maps a key to the whole Volume its
        patch was cut from (None: the patch itself is all there is)."""
        sources = sources or {}
        out = dict(data)
        keys = _spatial_keys(self, data)
        if not keys:
            return out
        shape = data[keys[0]].spatial_shape
        t = affine_index_map(shape, angles, scales)
        grids: dict = {}  # one grid per (source shape, affine): image and label share it
        for k in keys:
            vol = data[k]
            src = sources.get(k)
            arr, m = (vol.array, t) if src is None else _source_box(src, vol.affine @ t, shape, displacement)
            gk = (arr.shape[1:], m.tobytes())
            if gk not in grids:
                grids[gk] = sampling_grid(shape, m, displacement, in_shape=arr.shape[1:])
            mode = "nearest" if is_label_key(k) else "linear"
            out[k] = vol.replace(array=sample_grid(arr, grids[gk], mode, self.padding_mode), affine=vol.affine @ t)
        return out


def _source_box(src: Volume, out_affine: np.ndarray, shape, displacement) -> tuple[np.ndarray, np.ndarray]:
    """The part of the case ``src`` that output voxels (affine ``out_affine``) read, and the
    index map into that part. Clamped to the case, so "border" repeats the case's edge."""
    m = np.linalg.solve(src.affine, out_affine)  # output index -> case index
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    pts = m[:3, :3] @ corners + m[:3, 3:]
    pad = 1.0 + (float(np.abs(displacement).max()) if displacement is not None else 0.0)
    full = np.asarray(src.spatial_shape)
    lo = np.clip(np.floor(pts.min(1) - pad).astype(int), 0, full - 1)
    hi = np.clip(np.ceil(pts.max(1) + pad).astype(int) + 1, lo + 1, full)
    box = np.asarray(src.array[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])
    shift = np.eye(4)
    shift[:3, 3] = -lo
    return box, shift @ m


class WithSource(Transform):
    """Run patch ``sampler`` and keep, in each patch, the case volumes it was cut from
    (under ``SOURCE_KEY``) for a later ``RandSpatial``; nothing is copied."""

    random = True  # never part of a cached deterministic prefix

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, data: Data, rng: np.random.Generator | None = None):
        out = self.sampler(data, rng)
        src = {k: v for k, v in data.items() if isinstance(v, Volume)}
        for it in (out if isinstance(out, list) else [out]):
            it[SOURCE_KEY] = {k: src[k] for k in it if k in src and isinstance(it[k], Volume)}
        return out

    def __repr__(self) -> str:
        return f"WithSource({self.sampler!r})"
