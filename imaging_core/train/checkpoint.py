"""Checkpoints: data only, written atomically with a SHA-256 sidecar.

Loading never runs code: torch.load(weights_only=True) accepts tensors,
numbers, strings, None and dicts/lists/tuples of them, nothing else, so a
crafted file is refused instead of executed (the sidecar only catches a torn
or accidentally damaged file; whoever can write the file can write it too).
numpy arrays and scalars, which the server's state holds, are stored as
tagged tensors / Python numbers and come back as numpy.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from ..errors import ImagingError
from ..io.atomic import write_bytes_atomic

_NDARRAY = "__fedvox_ndarray__"  # {_NDARRAY: tensor}: a numpy array stored as a tensor
_SCALARS = (type(None), bool, int, float, str, bytes)


def _encode(obj, where: str):
    if isinstance(obj, np.generic):  # before the scalars: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Tensor) or isinstance(obj, _SCALARS) or isinstance(obj, torch.Size):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"checkpoint {where}: cannot store a numpy object array")
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(obj).copy())}
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where}: cannot store a {type(k).__name__} key")
            out[k] = _encode(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"checkpoint {where}: cannot store a {type(obj).__name__} "
                    "(only tensors, numpy arrays, numbers, strings, dicts, lists)")


def _decode(obj):
    if isinstance(obj, dict):
        if set(obj) == {_NDARRAY}:
            return obj[_NDARRAY].numpy()
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        out.update((k, _decode(v)) for k, v in obj.items())
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode(v) for v in obj)
    return obj


def checkpoint_bytes(state: dict) -> bytes:
    """What save_checkpoint writes (a TypeError before anything is written if
    ``state`` holds something a weights-only load would refuse)."""
    buf = io.BytesIO()
    torch.save(_encode(state, "state"), buf)
    return buf.getvalue()


def save_checkpoint(state: dict, path: str | os.PathLike) -> str:
    """Write ``state``; returns the SHA-256 of the file (for a record to keep)."""
    path = Path(path)
    data = checkpoint_bytes(state)
    digest = hashlib.sha256(data).hexdigest()
    # hash first, then the data: a crash between the two leaves a mismatch, never a silent pass
    write_bytes_atomic(path.with_name(path.name + ".sha256"), digest.encode())
    write_bytes_atomic(path, data)
    return digest


def load_checkpoint(path: str | os.PathLike, map_location="cpu", sha256: str | None = None) -> dict:
    """The checkpoint at ``path``; ``sha256``: the digest a record (not the file's
    own sidecar) says it must have."""
    path = Path(path)
    if not path.is_file():
        raise ImagingError(path, "checkpoint not found")
    data = path.read_bytes()
    side = path.with_name(path.name + ".sha256")
    if not side.is_file():
        raise ImagingError(path, "checkpoint has no .sha256 sidecar; refusing to load it")
    digest = hashlib.sha256(data).hexdigest()
    if digest != side.read_text().strip():
        raise ImagingError(path, "checkpoint is corrupt (SHA-256 mismatch)")
    if sha256 is not None and digest != sha256:
        raise ImagingError(path, "SHA-256 differs from the one the run record recorded; refusing to load it")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch's UnpicklingError names the refused global on one of its lines
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        why = next((x for x in lines if "GLOBAL" in x or "Unsupported" in x), lines[0] if lines else "")
        why = why.split(" Please use")[0]  # never advise allow-listing what was refused
        raise ImagingError(path, f"refusing to load: not a data-only checkpoint ({why[:200]})") from None
    return _decode(state)
