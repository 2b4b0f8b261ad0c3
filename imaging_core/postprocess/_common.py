"""Input checks shared by the post-processing faces.

All validation happens here, in Python, before any compiled op runs: the C++
side trusts its inputs, so a bad call must never reach it.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from .build import load_ops


def ops():
    return load_ops()


def threads() -> int:
    return max(1, torch.get_num_threads())


def as_tensor(x, fn: str, name: str) -> tuple[torch.Tensor, bool]:
    """(tensor, came_from_numpy); numpy arrays are wrapped without a copy."""
    if isinstance(x, torch.Tensor):
        return x, False
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind not in "biuf":
            raise ValueError(f"{fn}: {name} has unsupported numpy dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x)), True
    raise ValueError(f"{fn}: {name} must be a torch.Tensor or numpy array, got {type(x).__name__}")


def back(t: torch.Tensor, to_numpy: bool):
    return t.cpu().numpy() if to_numpy else t


def check_device(t: torch.Tensor, fn: str, name: str, cuda_ok: bool) -> None:
    if t.device.type == "cpu":
        return
    if t.device.type == "cuda" and cuda_ok:
        if not bool(ops().has_cuda()):
            raise ValueError(f"{fn}: {name} is on {t.device} but the fedvox ops were built "
                             "without CUDA; move it to the CPU")
        return
    raise ValueError(f"{fn}: {name} is on {t.device}; supported devices: cpu"
                     + (", cuda" if cuda_ok else ""))


def check_same_device(fn: str, **tensors: torch.Tensor) -> None:
    devs = {n: t.device for n, t in tensors.items()}
    if len(set(devs.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devs.items())
        raise ValueError(f"{fn}: inputs must share one device ({desc})")


def check_positive(value, fn: str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{fn}: {name} must be a finite number > 0, got {value!r}")
    return v


def check_spacing(spacing, fn: str, ndim: int = 3) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    if isinstance(spacing, (int, float)):
        spacing = (spacing,) * ndim
    if isinstance(spacing, torch.Tensor | np.ndarray):
        spacing = [float(s) for s in spacing.reshape(-1).tolist()]
    if not isinstance(spacing, Sequence) or len(spacing) != ndim:
        raise ValueError(f"{fn}: spacing must be {ndim} positive numbers, got {spacing!r}")
    return tuple(check_positive(s, fn, "spacing") for s in spacing)


def check_finite(t: torch.Tensor, fn: str, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "inf"
        raise ValueError(f"{fn}: {name} contains {bad} values")


def check_int(value, fn: str, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{fn}: {name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")
    return int(value)


def mask_u8(t: torch.Tensor, fn: str, name: str = "mask") -> torch.Tensor:
    """Nonzero -> 1 as a contiguous uint8 tensor (bool/integer input only)."""
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"{fn}: {name} must be bool or integer (nonzero = foreground), "
                         f"got {t.dtype}; threshold it first")
    if t.dtype == torch.bool:
        return t.contiguous().view(torch.uint8)
    if t.dtype == torch.uint8:
        return (t != 0).contiguous().view(torch.uint8)
    return (t != 0).view(torch.uint8).contiguous()
