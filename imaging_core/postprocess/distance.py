"""Exact Euclidean distance transform with anisotropic spacing.

Same values as scipy.ndimage.distance_transform_edt(mask, sampling=spacing):
every nonzero voxel gets the physical distance to the nearest zero voxel,
zero voxels get 0. One difference on purpose: a mask with no zero voxel at
all gives +inf everywhere (scipy returns meaningless finite numbers).
"""
from __future__ import annotations

import torch

from ._common import as_tensor, back, check_device, check_int, check_spacing, mask_u8, ops
from ._common import threads as n_threads

_DTYPES = {torch.float32: torch.float32, torch.float64: torch.float64}


def distance_transform(mask, spacing=None, dtype: torch.dtype = torch.float32,
                       threads: int | None = None):
    """Distance of each foreground (nonzero) voxel to the background.

    mask: 2-D or 3-D bool/integer tensor or numpy array (CPU, or CUDA when
    the ops were built with CUDA). spacing: one number or one per axis
    (default 1). dtype: torch.float32 (default) or torch.float64; the line
    computations run in float64 either way. threads: CPU threads (default:
    torch's intra-op thread count).
    """
    fn = "distance_transform"
    t, np_in = as_tensor(mask, fn, "mask")
    if t.dim() not in (2, 3):
        raise ValueError(f"{fn}: mask must be 2-D or 3-D, got shape {tuple(t.shape)}")
    if dtype not in _DTYPES:
        raise ValueError(f"{fn}: dtype must be torch.float32 or torch.float64, got {dtype}")
    sp = check_spacing(spacing, fn, t.dim())
    nt = n_threads() if threads is None else check_int(threads, fn, "threads", minimum=1)
    check_device(t, fn, "mask", cuda_ok=True)
    m = mask_u8(t, fn)
    if m.dim() == 2:
        m, sp = m.unsqueeze(0), (1.0,) + sp
    m = m.contiguous()
    out = torch.empty(m.shape, dtype=dtype, device=m.device)
    if m.numel():
        if m.is_cuda:
            nbytes = int(ops().edt_scratch_bytes_cuda(*m.shape, dtype == torch.float64))
            scratch = torch.empty(nbytes, dtype=torch.uint8, device=m.device)
            ops().edt_cuda(m, out, scratch, list(sp))
        else:
            ops().edt(m, out, list(sp), nt)
    return back(out.view(t.shape), np_in)
