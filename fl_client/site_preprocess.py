"""The site's own [preprocess], as the site worker states it for the ClientApp shim.

The shim (torch-free, a new process per message) does not read the federation
TOML; the worker writes what that file says, next to its socket
(keys.PREPROCESS_FILE), when it starts: {"auto": true} (the run's plan decides,
issue 16) or {"auto": false, "table": <PreprocessTable dump>}. The shim's policy
(fl_client.policy.admit_preprocess) compares the round config's table with it.
"""
from __future__ import annotations

import json
from pathlib import Path

from fl_common import keys as K


def write_own_preprocess(work_dir: str | Path, table: dict | None) -> Path:
    """``table`` None: the site's federation TOML says "auto"."""
    path = Path(work_dir) / K.PREPROCESS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"auto": True} if table is None else {"auto": False, "table": table}))
    tmp.replace(path)
    return path


def read_own_preprocess(worker_socket: str | Path) -> dict | None:
    """What the worker wrote; None when there is no such file (no worker serves there: the
    request then fails at the worker, which applies the same rule itself); ValueError naming
    the file if it is malformed."""
    path = Path(worker_socket).parent / K.PREPROCESS_FILE
    if not path.is_file():
        return None
    try:
        own = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ValueError(f"{path}: unreadable: the site worker writes it when it starts") from None
    if not isinstance(own, dict) or not (own.get("auto") is True or
                                         (own.get("auto") is False and isinstance(own.get("table"), dict))):
        raise ValueError(f"{path}: says neither \"auto\" nor a [preprocess] table")
    return own


def admit(pol, worker_socket: str | Path, cfg: dict) -> None:
    """The round config's [preprocess] against the site's own (fl_client.policy.admit_preprocess)."""
    from . import policy as P
    try:
        own = read_own_preprocess(worker_socket)
    except ValueError as e:  # the site's own file: its fault, not the request's
        raise P.SiteFault(str(e)) from None
    if own is not None:
        P.admit_preprocess(pol, own, cfg)
