"""Nearest-surface distances: which backend finds them, and finding them.

``directed(query, target, spacing)`` gives, for every True voxel of ``query``
(C order), the distance in mm to the nearest True voxel of ``target`` (both
non-empty bool arrays of one box shape). The values are the same whichever
backend runs; only the cost differs:

* ``"edt"``: a dense distance transform of the target over the box, read at
  the query voxels. In order of preference: a plug-in
  (``set_distance_transform``); fedvox's compiled exact EDT (csrc ``edt``,
  2-D/3-D, ~13 ns per box voxel here), built on first use; scipy's feature
  transform (~60 ns per box voxel) where the compiled ops cannot be built
  (no compiler, no sources: the reason is logged once) or for other ranks.
* ``"kdtree"``: nearest neighbours among the surface voxels' coordinates
  (what MONAI 1.6.1 itself does on CPU), ~0.3-1 us per surface voxel.
* ``"auto"`` (default): the plug-in when set; otherwise the dense transform
  unless the box holds more voxels per surface voxel than that transform's
  break-even with the KD-tree (a stray false positive far away stretches the
  box over the volume: the dense transform would then cost seconds and
  gigabytes for a few thousand points).
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

log = logging.getLogger(__name__)

#: ``fn(targets, sampling) -> distances``: ``targets`` is a bool array, the result
#: (same shape, float) holds for every voxel the Euclidean distance in mm to the
#: nearest True voxel of ``targets``, axes scaled by ``sampling``. That is
#: ``scipy.ndimage.distance_transform_edt(~targets, sampling=sampling)``.
DistanceTransform = Callable[[np.ndarray, Sequence[float]], np.ndarray]

_distance_transform: DistanceTransform | None = None

METHODS = ("auto", "edt", "kdtree")
_method = "auto"

# "auto": KD-tree when the box has more voxels than this per surface voxel (query
# + target). Measured here (2-core CPU, shifted spheres r 8..60): scipy's feature
# transform 50-70 ns per box voxel, the compiled EDT 10-15 ns, the KD-tree build +
# query 0.3-1 us per surface voxel: break-even at 5-15 and 25-75 voxels per point.
_KDTREE_VOXELS_PER_POINT = {"scipy": 8, "compiled": 30}

# Boxes under this many voxels (~50 ms on one core) get a one-thread compiled EDT:
# on this shared 2-core machine a second OpenMP thread saved at most a few ms there
# but cost 50-100 ms whenever another process held the other core (barrier waits).
_ONE_THREAD_VOXELS = 4_000_000

# None: not tried yet; False: cannot be built here; else the face (postprocess.distance).
_compiled: Callable | bool | None = None


def set_distance_transform(fn: DistanceTransform | None) -> DistanceTransform | None:
    """Use ``fn`` for every distance transform from now on (None: built-in path).

    Returns the previous plug-in, so callers (and tests) can restore it.
    """
    global _distance_transform
    if fn is not None and not callable(fn):
        raise TypeError(f"distance transform must be callable, got {type(fn).__name__}")
    prev, _distance_transform = _distance_transform, fn
    return prev


def get_distance_transform() -> DistanceTransform | None:
    return _distance_transform


def set_distance_method(method: str) -> str:
    """``"auto"`` (default), ``"edt"`` or ``"kdtree"``; returns the previous one."""
    global _method
    if method not in METHODS:
        raise ValueError(f"distance method must be one of {METHODS}, got {method!r}")
    prev, _method = _method, method
    return prev


def scipy_distance_transform(targets: np.ndarray, sampling: Sequence[float]) -> np.ndarray:
    """Reference implementation of the plug-in contract (dense, float64)."""
    return ndi.distance_transform_edt(~np.asarray(targets, dtype=bool), sampling=tuple(sampling))


def _compiled_face():
    """fedvox's compiled EDT face, or None where the ops cannot be built (tried once:
    a failed build is not retried on every metric call)."""
    global _compiled
    if _compiled is None:
        from ..postprocess.build import OpsBuildError, load_ops  # torch only when needed
        try:
            load_ops()
            from ..postprocess.distance import distance_transform
            _compiled = distance_transform
        except OpsBuildError as err:
            log.info("surface distances use scipy's distance transform: %s", err)
            _compiled = False
    return _compiled or None


def dense_backend(ndim: int) -> str:
    """Which dense transform ``"edt"`` uses for ``ndim``-D boxes now:
    "plug-in", "compiled" or "scipy"."""
    if _distance_transform is not None:
        return "plug-in"
    return "compiled" if ndim in (2, 3) and _compiled_face() is not None else "scipy"


def _kdtree(q: tuple[np.ndarray, ...], target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    # Surface voxels shared by both masks are at distance 0: only the others are
    # looked up (most of them, for a good segmentation).
    out = np.zeros(q[0].size, dtype=np.float64)
    away = ~target[q]
    if away.any():
        scale = np.asarray(spacing, dtype=np.float64)
        pts_t = np.argwhere(target) * scale
        pts_q = np.stack([i[away] for i in q], axis=1) * scale
        # leafsize 32: one batched query per tree, so a cheaper build pays off
        out[away] = cKDTree(pts_t, leafsize=32).query(pts_q, k=1)[0]
    return out


def _scipy_at(q: tuple[np.ndarray, ...], target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    # The feature transform gives the nearest target voxel's index for every voxel;
    # distances are then needed at the query voxels only, not densely.
    ft = ndi.distance_transform_edt(~target, sampling=spacing, return_distances=False,
                                    return_indices=True)
    d2 = np.zeros(q[0].size, dtype=np.float64)
    for ax, s in enumerate(spacing):
        diff = (ft[ax][q] - q[ax]).astype(np.float64) * s
        d2 += diff * diff
    return np.sqrt(d2)


def _dense_at(fn: Callable, q, target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    dist = np.asarray(fn(target, spacing), dtype=np.float64)
    if dist.shape != target.shape:
        raise ValueError(f"distance transform returned shape {dist.shape}, expected {target.shape}")
    return dist[q]


def _compiled_transform(target: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    import torch  # already imported by the compiled face
    threads = 1 if target.size < _ONE_THREAD_VOXELS else max(1, torch.get_num_threads())
    return _compiled_face()(~target, spacing, dtype=torch.float64, threads=threads)


def directed(query: np.ndarray, target: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance (mm) from every True voxel of ``query`` (C order) to the nearest True
    voxel of ``target``; both non-empty arrays of the same (box) shape."""
    q = np.nonzero(query)
    method = _method
    if method == "kdtree":
        return _kdtree(q, target, spacing)
    backend = dense_backend(target.ndim)
    if method == "auto" and backend != "plug-in":
        n_points = q[0].size + int(np.count_nonzero(target))
        if target.size > _KDTREE_VOXELS_PER_POINT[backend] * n_points:
            return _kdtree(q, target, spacing)
    if backend == "plug-in":
        return _dense_at(_distance_transform, q, target, spacing)
    if backend == "compiled":
        return _dense_at(_compiled_transform, q, target, spacing)
    return _scipy_at(q, target, spacing)
