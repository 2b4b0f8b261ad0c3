"""Named numpy arrays <-> the worker API's Tensor messages, flat vectors, and
the one packed Array a model travels in on Flower's wire.

numpy only (no torch): the ClientApp shim imports this module and must start
fast (flwr is imported only by the record helpers). Order matters: a model's
tensors always travel in state-dict order.
"""
from __future__ import annotations

import json
import struct
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


# ---- a model on Flower's wire: ONE Array (bytes) instead of one per tensor.
# Flower stores and moves every Array as its own object, one HTTP/gRPC request per
# object and hop (server -> SuperLink -> SuperNode -> runner); a 37-tensor UNet was
# 60 objects per message and 5-7 s of a stage on sites_example, packed it is 4.
PACKED = "model"            # the packed record's one key
_DTYPES = {"<f4", "<f2", "<f8", "<i8", "<i4", "|u1", "|i1", "|b1"}  # what a state dict holds
_MAX_HEADER = 4 << 20


def pack(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """uint8 buffer: 8-byte header length, JSON [[name, dtype, shape], ...], raw data."""
    parts, layout = [], []
    for name, a in arrays.items():
        a = np.asarray(a)  # not ascontiguousarray: it makes a 0-d tensor 1-d; tobytes is C order
        if a.dtype.str not in _DTYPES:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be packed")
        layout.append([str(name), a.dtype.str, [int(d) for d in a.shape]])
        parts.append(a.tobytes())
    header = json.dumps(layout, separators=(",", ":")).encode()
    return np.frombuffer(struct.pack("<Q", len(header)) + header + b"".join(parts), dtype=np.uint8)


def unpack(buf: np.ndarray) -> dict[str, np.ndarray]:
    """The named arrays of ``pack``; a ValueError names the first inconsistency."""
    b = np.ascontiguousarray(buf).view(np.uint8).ravel().tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
    if len(b) < 8:
        raise ValueError("packed model: shorter than its header length")
    (n,) = struct.unpack("<Q", b[:8])
    if n > min(_MAX_HEADER, len(b) - 8):
        raise ValueError(f"packed model: header length {n} out of range")
    try:
        layout = json.loads(b[8:8 + n])
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"packed model: header is not JSON ({e})") from None
    if not isinstance(layout, list):
        raise ValueError("packed model: header is not a list")
    out: dict[str, np.ndarray] = {}
    off = 8 + n
    for entry in layout:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or entry[1] not in _DTYPES or not isinstance(entry[2], list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in entry[2])):
            raise ValueError(f"packed model: bad layout entry {str(entry)[:80]}")
        name, dt, shape = entry[0], np.dtype(entry[1]), tuple(entry[2])
        if name in out:
            raise ValueError(f"packed model: tensor {name!r} twice")
        size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if off + size > len(b):
            raise ValueError(f"packed model: tensor {name!r} runs past the data")
        out[name] = np.frombuffer(b, dtype=dt, count=size // dt.itemsize, offset=off).reshape(shape)
        off += size
    if off != len(b):
        raise ValueError(f"packed model: {len(b) - off} bytes after the last tensor")
    return out


def to_record(arrays: Mapping[str, np.ndarray]):
    """A model as Flower's ArrayRecord (one packed Array)."""
    from flwr.app import Array, ArrayRecord
    return ArrayRecord({PACKED: Array(pack(arrays))})


def from_record(record) -> dict[str, np.ndarray]:
    """The model in an ArrayRecord made by ``to_record``; anything else is refused."""
    if list(record.keys()) != [PACKED]:
        raise ValueError(f"a model record holds exactly one packed array {PACKED!r}, not {list(record.keys())[:5]}")
    return unpack(record[PACKED].numpy())
