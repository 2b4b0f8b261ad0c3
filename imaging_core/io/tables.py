"""The one JSON reader and the one JSON / CSV writers for result files.

Writes are atomic (atomic.py). NaN stays NaN in JSON (an extension Python and
pandas read back); numpy scalars and arrays are written as numbers and lists.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..errors import ImagingError
from .atomic import write_bytes_atomic

_REQUIRED = object()


def _json_default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def read_json(path: str | os.PathLike, default=_REQUIRED):
    """A JSON file; ``default`` if it is absent (absent without a default: an error naming it)."""
    path = Path(path)
    if not path.is_file():
        if default is not _REQUIRED and default is not None:
            return default
        raise ImagingError(path, "missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ImagingError(path, f"not valid JSON ({e})") from None


def json_bytes(obj, indent: int | None = 1) -> bytes:
    return json.dumps(obj, indent=indent, default=_json_default).encode()


def write_json(path: str | os.PathLike, obj, indent: int | None = 1, mode: int | None = None) -> None:
    write_bytes_atomic(path, json_bytes(obj, indent), mode=mode)


def scalar_columns(rows: Iterable[dict]) -> list[str]:
    """Keys of the rows' scalar values, in order of first appearance (dicts and lists are
    left to the JSON twin of the table)."""
    keys: dict[str, None] = {}
    for r in rows:
        for k, v in r.items():
            if not isinstance(v, (dict, list)):
                keys.setdefault(k, None)
    return list(keys)


def csv_bytes(rows: Sequence[dict], fieldnames: Sequence[str] | None = None) -> bytes:
    cols = list(fieldnames) if fieldnames is not None else scalar_columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    return buf.getvalue().encode()


def write_csv(path: str | os.PathLike, rows: Sequence[dict], fieldnames: Sequence[str] | None = None,
              mode: int | None = None) -> None:
    """One row per dict; columns ``fieldnames`` or every scalar key (a missing value is empty)."""
    write_bytes_atomic(path, csv_bytes(rows, fieldnames), mode=mode)
