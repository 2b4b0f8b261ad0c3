"""Named numpy arrays <-> the worker API's Tensor messages and flat vectors.

numpy only (no torch): the ClientApp shim imports this module and must start
fast. Order matters: a model's tensors always travel in state-dict order.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from protos import site_worker_pb2 as pb


def to_proto(arrays: Mapping[str, np.ndarray]) -> list[pb.Tensor]:
    out = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        out.append(pb.Tensor(name=name, dtype=a.dtype.str, shape=list(a.shape), data=a.tobytes()))
    return out


def from_proto(tensors: Iterable[pb.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for t in tensors:
        a = np.frombuffer(t.data, dtype=np.dtype(t.dtype))
        expected = int(np.prod(t.shape, dtype=np.int64)) if len(t.shape) else 1
        if a.size != expected:
            raise ValueError(f"tensor {t.name!r}: {a.size} values for shape {tuple(t.shape)}")
        out[t.name] = a.reshape(tuple(t.shape))
    return out


def flatten(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """Concatenate float tensors into one float32 vector (what secure aggregation masks)."""
    if not arrays:
        return np.zeros(0, np.float32)
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays.values()])


def unflatten(vec: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Split a flat vector back into tensors shaped (and typed) like ``like``."""
    out, i = {}, 0
    for name, ref in like.items():
        n = int(np.prod(ref.shape, dtype=np.int64))
        out[name] = vec[i:i + n].reshape(ref.shape).astype(ref.dtype, copy=False)
        i += n
    if i != vec.size:
        raise ValueError(f"flat vector has {vec.size} values, the model {i}")
    return out
