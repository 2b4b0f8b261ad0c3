"""Mixed precision policy: bf16 autocast on CPU; fp16 + grad scaler (or bf16) on CUDA."""
from __future__ import annotations

import contextlib

import torch


def resolve_amp(amp: str | None, device: torch.device) -> str | None:
    """'auto' -> 'bf16' on CPU, 'bf16' on CUDA cards that support it else 'fp16'."""
    if amp in (None, "none", "off", False):
        return None
    if amp == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16"
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be auto, bf16, fp16 or none, got {amp!r}")
    if amp == "fp16" and device.type == "cpu":
        raise ValueError("fp16 autocast is for CUDA; use bf16 on CPU")
    return amp


def autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str | None):
    """Only fp16 needs loss scaling (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
