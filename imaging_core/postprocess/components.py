"""Connected components and the per-class clean-ups built on them.

connected_components numbers components 1..count in raster order of each
component's first voxel, exactly like scipy.ndimage.label with the matching
structure. Default connectivity is full (26 in 3-D, 8 in 2-D), as in MONAI's
KeepLargestConnectedComponent.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from ._common import as_tensor, back, check_device, check_int, mask_u8, ops, threads

_CONN = {3: (6, 18, 26), 2: (4, 8)}
_CONN_2D_AS_3D = {4: 6, 8: 18}  # a one-voxel-thick 3-D slab behaves the same


def _check_conn(connectivity, ndim: int, fn: str) -> int:
    if connectivity is None:
        connectivity = 26 if ndim == 3 else 8
    if isinstance(connectivity, bool) or connectivity not in _CONN[ndim]:
        raise ValueError(f"{fn}: connectivity for {ndim}-D must be one of {_CONN[ndim]}, "
                         f"got {connectivity!r}")
    return int(connectivity) if ndim == 3 else _CONN_2D_AS_3D[int(connectivity)]


def _label(m: torch.Tensor, conn3: int) -> tuple[torch.Tensor, int]:
    """m: (X,Y,Z) uint8 contiguous on CPU or CUDA -> int32 labels, count."""
    if m.is_cuda:
        parent = torch.empty(m.shape, dtype=torch.int32, device=m.device)
        ops().cc3d_roots_cuda(m, parent, conn3)
        flat = parent.view(-1)
        fg = flat >= 0
        idx = torch.arange(flat.numel(), device=m.device, dtype=torch.int32)
        roots = fg & (flat == idx)
        rank = torch.cumsum(roots, 0, dtype=torch.int32)  # root i -> its label
        labels = torch.where(fg, rank[flat.clamp(min=0).long()], torch.zeros_like(flat))
        return labels.view(m.shape), int(roots.sum())
    labels = torch.empty(m.shape, dtype=torch.int32)
    count = ops().cc3d(m, labels, conn3, threads())
    return labels, int(count)


def connected_components(mask, connectivity: int | None = None):
    """Label the connected foreground (nonzero) regions of a 2-D/3-D mask.

    Returns (labels int32, count); labels is a numpy array when mask is one.
    """
    fn = "connected_components"
    t, np_in = as_tensor(mask, fn, "mask")
    if t.dim() not in (2, 3):
        raise ValueError(f"{fn}: mask must be 2-D or 3-D, got shape {tuple(t.shape)}")
    conn3 = _check_conn(connectivity, t.dim(), fn)
    check_device(t, fn, "mask", cuda_ok=True)
    m = mask_u8(t, fn)
    m3 = m.unsqueeze(0) if m.dim() == 2 else m
    labels, count = _label(m3.contiguous(), conn3)
    labels = labels.view(t.shape)
    return back(labels, np_in), count


_WIDEN = (torch.uint16, torch.uint32, torch.uint64)  # torch lacks masked_fill for these


def _label_map(label_map, fn: str) -> tuple[torch.Tensor, bool]:
    t, np_in = as_tensor(label_map, fn, "label_map")
    if t.dim() not in (2, 3):
        raise ValueError(f"{fn}: label_map must be 2-D or 3-D, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{fn}: label_map must be bool or integer, got {t.dtype}")
    check_device(t, fn, "label_map", cuda_ok=True)
    return t, np_in


def _classes(t: torch.Tensor, classes, fn: str) -> list[int]:
    if classes is None:
        present = torch.unique(t)
        return [int(c) for c in present.tolist() if c != 0]
    if isinstance(classes, int | np.integer):
        classes = [classes]
    if not isinstance(classes, Iterable):
        raise ValueError(f"{fn}: classes must be an int or a list of ints, got {classes!r}")
    out = []
    for c in classes:
        c = check_int(c, fn, "class", minimum=1)
        out.append(c)
    return out


def _sizes(labels: torch.Tensor, count: int) -> torch.Tensor:
    return torch.bincount(labels.view(-1).long(), minlength=count + 1)


def _drop_components(label_map, classes, connectivity, fn: str, drop):
    """Per class, label its connected components and set to background (0) the
    voxels of the components ``drop(labels, count)`` marks (a bool tensor indexed
    by component id, 0 = background). Returns the same type, dtype and device."""
    t, np_in = _label_map(label_map, fn)
    conn3 = _check_conn(connectivity, t.dim(), fn)
    out = t.long() if t.dtype in _WIDEN else t.clone()
    view3 = out.unsqueeze(0) if out.dim() == 2 else out
    for c in _classes(t, classes, fn):
        sel = view3 == c
        if not bool(sel.any()):
            continue
        labels, count = _label(sel.view(torch.uint8).contiguous(), conn3)
        gone = drop(labels, count)
        if gone is None:
            continue
        gone[0] = False
        view3[gone[labels.long()] & sel] = 0
    return back(out.to(t.dtype), np_in)


def keep_largest(label_map, classes=None, connectivity: int | None = None):
    """Per class, keep only its largest connected component; the other
    components of that class become background (0). Ties keep the component
    that comes first in raster order. classes: int, list, or None (every
    nonzero value present). Returns the same type, dtype and device."""
    def drop(labels, count):
        if count <= 1:
            return None
        sizes = _sizes(labels, count)
        sizes[0] = -1
        gone = torch.ones_like(sizes, dtype=torch.bool)
        gone[int(torch.argmax(sizes))] = False  # first maximum: raster-order tie break
        return gone
    return _drop_components(label_map, classes, connectivity, "keep_largest", drop)


def remove_small(label_map, min_voxels: int, classes=None, connectivity: int | None = None):
    """Per class, set components with fewer than min_voxels voxels to
    background (0). Returns the same type, dtype and device."""
    min_voxels = check_int(min_voxels, "remove_small", "min_voxels", minimum=0)
    return _drop_components(label_map, classes, connectivity, "remove_small",
                            lambda labels, count: _sizes(labels, count) < min_voxels)
