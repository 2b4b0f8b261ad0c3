"""One error for a bad configuration: it names the file, the table and the key,
with a "did you mean" for a near miss (a misspelt key must never fall back
silently to a default)."""
from __future__ import annotations

import difflib
import os
import typing

from pydantic import BaseModel, ValidationError

from .errors import ImagingError

# tags of discriminated unions: pydantic puts them in an error's location, a user never writes them
_UNION_TAGS = {"window", "zscore", "percentile"}


class ConfigError(ImagingError):
    """``<path>: [<table>] <key>: <problem>``; ``table``/``key`` are None where they do not apply."""

    def __init__(self, path: str | os.PathLike | None, table: str | None, key: str | None, problem: str):
        self.table, self.key = table, key
        where = " ".join(p for p in (f"[{table}]" if table else None, key) if p)
        super().__init__(path, f"{where}: {problem}" if where else problem)


def did_you_mean(word: str, known, list_known: bool = True) -> str:
    """`` (did you mean 'pixdim'?)`` for a near miss, else the known names (or nothing)."""
    known = sorted(str(k) for k in known)
    close = difflib.get_close_matches(str(word), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (known: {', '.join(known)})" if known and list_known else ""


def _unwrap(tp):
    """The model class reached through Optional/Annotated/list/dict/Union, or None."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (list, tuple, dict):
            tp = typing.get_args(tp)[-1] if typing.get_args(tp) else None
        elif origin is not None:  # Union / X | None: the first model among the members
            members = [_unwrap(a) for a in typing.get_args(tp)]
            return next((m for m in members if m is not None), None)
        else:
            return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _fields_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """The field names of the model that sits at ``loc`` under ``root``."""
    cls = root
    for part in loc:
        if isinstance(part, str) and part in cls.model_fields:
            nxt = _unwrap(cls.model_fields[part].annotation)
            if nxt is None:
                return []
            cls = nxt
        # dict keys and list indices stay on the value's model
    return list(cls.model_fields)


def from_validation(err: ValidationError, path, root: type[BaseModel], table: str | None = None) -> ConfigError:
    """The first problem of ``err`` as one ConfigError. ``table``: the table that
    ``root`` models (None: ``root`` is the whole file, its first level are tables)."""
    errs = err.errors(include_url=False)
    # a misspelt key also leaves its real name "missing": name the misspelling
    e = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    loc = tuple(p for p in e["loc"] if p not in _UNION_TAGS)
    parts = [str(p) for p in loc]
    if table is None:
        if not parts:
            return ConfigError(path, None, None, e["msg"])
        tbl, keys = parts[0], parts[1:]
    else:
        tbl, keys = table, parts
    key = ".".join(keys) or None
    kind, value = e["type"], e.get("input")
    if kind == "extra_forbidden":
        known = _fields_at(root, loc[:-1])
        if table is None and len(loc) == 1:
            return ConfigError(path, None, None, f"unknown table [{tbl}]" + did_you_mean(tbl, known))
        return ConfigError(path, tbl, key, "unknown key" + did_you_mean(keys[-1], known))
    if kind == "literal_error":
        expected = [x.strip(" '") for x in str(e.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")]
        expected = [x for x in expected if x]
        hint = did_you_mean(value, expected, list_known=False) if isinstance(value, str) else ""
        return ConfigError(path, tbl, key, f"{value!r} is not one of {', '.join(expected)}{hint}")
    if kind == "union_tag_invalid":
        expected = [x.strip(" '") for x in str(e.get("ctx", {}).get("expected_tags", "")).split(",")]
        hint = did_you_mean(e.get("ctx", {}).get("tag", ""), expected, list_known=False)
        return ConfigError(path, tbl, key, f"kind {e['ctx']['tag']!r} is not one of {', '.join(expected)}{hint}")
    msg = e["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return ConfigError(path, tbl, key, "required key is missing")
    return ConfigError(path, tbl, key, f"{msg} (got {value!r})" if not isinstance(value, dict) else msg)
