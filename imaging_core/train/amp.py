"""Mixed precision policy: bf16 (or fp16 + grad scaler) on CUDA; on CPU, bf16
only where it is measured to be faster.

"auto" on a CPU used to mean bf16 everywhere, but a CPU with avx512_bf16 and
no AMX runs 3D convolutions slower in bf16 than in fp32. So "auto" times a few
conv3d forward/backward steps in both and keeps the faster; the choice is
cached per machine (CPU model / device name) and torch version in a small JSON
under $FEDVOX_CACHE (default ~/.cache/fedvox), and amp_choice() says what was
chosen and how, for the run record.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

# bf16 must win clearly: a near tie is not worth its rounding error
BF16_MIN_SPEEDUP = 1.1


def cache_dir() -> Path:
    return Path(os.environ.get("FEDVOX_CACHE") or Path.home() / ".cache" / "fedvox")


def machine_key(device: torch.device) -> str:
    """What the probe's answer depends on: the processor (or GPU) and torch."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return f"{device.type}|{name}|torch {torch.__version__}"


def decide(fp32_s: float, bf16_s: float) -> str | None:
    """'bf16' if it was clearly faster than fp32, else None (fp32)."""
    return "bf16" if bf16_s * BF16_MIN_SPEEDUP < fp32_s else None


def probe(device: torch.device, steps: int = 2) -> tuple[float, float]:
    """Seconds of one forward/backward pass of a tiny fedvox UNet3D (the blocks
    training runs: conv3d, instance norm, PReLU, channels-last) in fp32 and under
    bf16 autocast: the best of ``steps``, the two precisions taking turns after a
    warm-up each, so first-call overheads and a load that drifts do not decide."""
    from ..nets import UNet3D
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = UNet3D(in_channels=1, out_channels=2, channels=(8, 16), strides=(2,), num_res_units=1).to(device)
        x = torch.randn(1, 1, 24, 24, 24).to(device)

    def once(amp: str | None) -> float:
        t0 = time.perf_counter()
        with autocast(device, amp):
            y = net(x)
        y.float().square().mean().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - t0

    once(None), once("bf16")
    best = {None: float("inf"), "bf16": float("inf")}
    for _ in range(steps):
        for amp in best:
            best[amp] = min(best[amp], once(amp))
    return best[None], best["bf16"]


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
        return doc if isinstance(doc, dict) else {}
    except (OSError, ValueError):
        return {}


def amp_choice(device: str | torch.device = "cpu", cache: Path | None = None,
               timer: Callable[[torch.device], tuple[float, float]] = probe) -> dict:
    """What "auto" means on ``device``: ``{"amp": "bf16" | None, "probe_s": ...,
    "source": "probe" | "cache" | "rule", "fp32_s": ..., "bf16_s": ...}``.
    ``timer`` is the probe (injected in tests)."""
    device = torch.device(device)
    if device.type == "cuda":  # tensor cores: reduced precision is always a win there
        return {"amp": "bf16" if torch.cuda.is_bf16_supported() else "fp16", "probe_s": 0.0, "source": "rule"}
    path = (cache or cache_dir()) / "amp.json"
    key = machine_key(device)
    known = _read(path)
    if key in known and known[key].get("amp") in ("bf16", None):
        return {**known[key], "source": "cache"}
    t0 = time.perf_counter()
    fp32_s, bf16_s = timer(device)
    choice = {"amp": decide(fp32_s, bf16_s), "probe_s": round(time.perf_counter() - t0, 4),
              "fp32_s": round(fp32_s, 6), "bf16_s": round(bf16_s, 6)}
    try:  # a read-only home only costs a probe per process
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**_read(path), key: choice}, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return {**choice, "source": "probe"}


def resolve_amp(amp: str | None, device: torch.device) -> str | None:
    """'auto' -> amp_choice(device)['amp']; 'none'/'off'/None -> None (fp32)."""
    if amp in (None, "none", "off", False):
        return None
    if amp == "auto":
        return amp_choice(device)["amp"]
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be auto, bf16, fp16 or none, got {amp!r}")
    if amp == "fp16" and torch.device(device).type == "cpu":
        raise ValueError("fp16 autocast is for CUDA; use bf16 on CPU")
    return amp


def autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def grad_scaler(device: torch.device, amp: str | None):
    """Only fp16 needs loss scaling (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=(amp == "fp16"))
