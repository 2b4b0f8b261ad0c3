"""`--device` for every subcommand that takes one: auto, cpu, cuda, cuda:N (mps on macOS).

A device this torch cannot use is a usage error with one clear line (exit 2),
not a traceback from deep inside the first tensor move.
"""
from __future__ import annotations

import re

CHOICES = "auto, cpu, cuda, cuda:N, mps"


class DeviceError(ValueError):
    """A --device this machine cannot honour."""


def resolve_device(name: str | None) -> str | None:
    """The torch device string for ``name``; ``auto`` = cuda when available, else cpu.
    ``None`` stays None (the command's own default applies). Imports torch only when needed."""
    if name is None:
        return None
    n = name.strip().lower()
    if n == "cpu":
        return "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", n)
    if n not in ("auto", "mps") and m is None:
        raise DeviceError(f"--device {name!r}: not one of {CHOICES}")
    import torch
    if n == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if n == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: this machine has no Metal device; use --device cpu or auto")
        return "mps"
    if not torch.cuda.is_available():
        why = "a CPU-only build" if torch.version.cuda is None else "no CUDA device visible"
        raise DeviceError(f"--device {name}: this torch ({torch.__version__}) has no CUDA ({why}); "
                          "use --device cpu or --device auto")
    if m.group(1) is not None and int(m.group(1)) >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return n
