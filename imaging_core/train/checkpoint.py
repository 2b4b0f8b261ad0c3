"""Checkpoints written atomically with a SHA-256 sidecar, so a torn or
tampered file is detected before torch unpickles anything from it."""
from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch

from ..errors import ImagingError
from ..io.atomic import write_bytes_atomic


def save_checkpoint(state: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    # hash first, then the data: a crash between the two leaves a mismatch, never a silent pass
    write_bytes_atomic(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())
    write_bytes_atomic(path, data)
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ImagingError(path, "checkpoint not found")
    data = path.read_bytes()
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        raise ImagingError(path, "checkpoint has no .sha256 sidecar; refusing to load it")
    if hashlib.sha256(data).hexdigest() != side.read_text().strip():
        raise ImagingError(path, "checkpoint is corrupt (SHA-256 mismatch)")
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
