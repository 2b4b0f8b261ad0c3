"""Sliding-window inference with Gaussian or constant blending.

Window positions and the Gaussian weight follow MONAI's
`sliding_window_inference` (same scan interval, same last-window shift, same
sigma and clamping), so outputs agree with it to float tolerance in fp32.
What differs: optional AMP for the network (bf16 on CPU, fp16/bf16 on CUDA),
the blend weights' normaliser computed once per grid, an output buffer that
can live on another device than the network (MONAI issue #6427: a full-size
buffer on the GPU runs out of memory for large volumes), flip test-time
augmentation, and freed CPU memory kept for reuse (``keep_freed_memory``).
"""
from __future__ import annotations

import ctypes
import math
import os
import sys
from functools import lru_cache
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed CPU memory for reuse; True when in effect.

    A network's forward pass allocates and frees every activation; glibc serves
    blocks over 32 MB with fresh mmaps, so each forward page-faults its
    activations in again: ~110k faults (450 MB) per batch of 4 96^3 windows for
    the bench UNet, ~20% of its CPU time on an idle 2-core machine and 2-4x the
    wall time when another process holds a core (the threads then queue on
    the faults). With the mmap threshold raised and trimming off, freed blocks go
    back to the heap and are reused, which is what torch's CUDA caching allocator
    does on the GPU. Process-wide and lasting (the process keeps its peak heap),
    set once on the first CPU inference; ``FEDVOX_KEEP_FREED_MEMORY=0`` turns it
    off; a no-op where the C library is not glibc.
    """
    global _kept
    if _kept is None:
        _kept = False
        if sys.platform.startswith("linux") and os.environ.get("FEDVOX_KEEP_FREED_MEMORY", "1") != "0":
            try:
                libc = ctypes.CDLL("libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and others: nothing to tune
                return False
            # some glibc versions cap the threshold at 32 MB: then the cap
            _kept = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30) or mallopt(_M_MMAP_THRESHOLD, 32 << 20))
            if _kept:
                mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
    return _kept


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start indices along one axis; the last window is shifted back to fit."""
    if roi >= size:
        return [0]
    step = max(int(roi * (1 - overlap)), 1)
    n = next(d for d in range(math.ceil(size / step)) if d * step + roi >= size) + 1
    return [min(i * step, size - roi) for i in range(n)]


@lru_cache(maxsize=16)
def _importance(roi: tuple[int, ...], mode: str, sigma_scale: tuple[float, ...], device: str) -> torch.Tensor:
    if mode == "constant":
        return torch.ones(roi, device=device)
    if mode != "gaussian":
        raise ValueError(f"blend mode must be 'gaussian' or 'constant', got {mode!r}")
    w = None
    for n, s in zip(roi, sigma_scale):
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0
        g = torch.exp(-(x ** 2) / (2 * (n * s) ** 2))
        w = g if w is None else w.unsqueeze(-1) * g
    # windows' borders get tiny weight, never zero (no division by ~0 where they alone cover)
    return w.clamp_(min=max(float(w.min()), 1e-3))


def importance_map(roi: Sequence[int], mode: str = "gaussian", sigma_scale: float | Sequence[float] = 0.125,
                   device: str | torch.device = "cpu") -> torch.Tensor:
    ss = tuple(sigma_scale) if isinstance(sigma_scale, (tuple, list)) else (float(sigma_scale),) * len(roi)
    return _importance(tuple(int(r) for r in roi), mode, ss, str(device))


def _autocast(device: torch.device, amp: str | None):
    if not amp:
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device.type, dtype=dtype)


def sliding_window_inference(inputs: torch.Tensor, roi_size: Sequence[int], predictor: Callable,
                             sw_batch_size: int = 4, overlap: float = 0.25, mode: str = "gaussian",
                             sigma_scale: float = 0.125, padding_mode: str = "constant", cval: float = 0.0,
                             out_device: str | torch.device | None = None, amp: str | None = None,
                             flip_tta: bool = False, progress: Callable[[int, int], None] | None = None
                             ) -> torch.Tensor:
    """Predict ``(B, K, *S)`` float32 for ``inputs`` ``(B, C, *S)`` window by window.

    ``predictor`` runs on ``inputs.device``; the blended output accumulates on
    ``out_device`` (default: the same device). ``amp``: None, "bf16" or "fp16".
    ``progress(done, total)`` is called after every window batch.
    """
    if inputs.ndim != len(roi_size) + 2:
        raise ValueError(f"inputs must be (B, C, {len(roi_size)} spatial dims), got {tuple(inputs.shape)}")
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    dev = inputs.device
    out_dev = torch.device(out_device) if out_device is not None else dev
    if dev.type == "cpu":
        keep_freed_memory()
    B, _, *orig = inputs.shape
    roi = [int(r) for r in roi_size]
    pad = []
    for r, s in zip(reversed(roi), reversed(orig)):  # F.pad wants last axis first
        d = max(r - s, 0)
        pad += [d // 2, d - d // 2]
    if any(pad):
        inputs = F.pad(inputs, pad, mode=padding_mode, value=cval) if padding_mode == "constant" \
            else F.pad(inputs, pad, mode=padding_mode)
    size = list(inputs.shape[2:])
    starts = [window_starts(s, r, overlap) for s, r in zip(size, roi)]
    grid = [tuple(p) for p in torch.cartesian_prod(*[torch.tensor(s) for s in starts]).reshape(-1, len(roi)).tolist()]
    weight = importance_map(roi, mode, sigma_scale, dev)
    windows = [(b, p) for b in range(B) for p in grid]

    # normaliser: the same for every batch item, computed once on the output device
    norm = torch.zeros(size, device=out_dev)
    w_out = weight.to(out_dev)
    for p in grid:
        norm[tuple(slice(s, s + r) for s, r in zip(p, roi))] += w_out

    out = None
    flips = [()] + ([(d,) for d in range(2, 2 + len(roi))] if flip_tta else [])
    with torch.inference_mode():
        for i in range(0, len(windows), sw_batch_size):
            chunk = windows[i:i + sw_batch_size]
            x = torch.stack([inputs[b, :, *[slice(s, s + r) for s, r in zip(p, roi)]] for b, p in chunk])
            with _autocast(dev, amp):
                y = None
                for f in flips:
                    yf = predictor(x.flip(f) if f else x).float()
                    yf = yf.flip(f) if f else yf
                    y = yf if y is None else y.add_(yf)
            if len(flips) > 1:
                y /= len(flips)
            y = y.mul_(weight).to(out_dev)  # y is this batch's own fresh tensor
            if out is None:
                out = torch.zeros((B, y.shape[1], *size), device=out_dev)
            for (b, p), yb in zip(chunk, y):
                out[b, :, *[slice(s, s + r) for s, r in zip(p, roi)]] += yb
            if progress:
                progress(min(i + sw_batch_size, len(windows)), len(windows))
        out /= norm
    crop = [slice(None), slice(None)] + [slice(pad[2 * (len(roi) - 1 - k)],
                                               pad[2 * (len(roi) - 1 - k)] + orig[k]) for k in range(len(roi))]
    return out[tuple(crop)]
