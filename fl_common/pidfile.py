"""Pid files of fedvox's long-running commands (`fedvox server`: RUN/server.json,
`fedvox site`: WORK/site.json): a JSON object with the pid, the process's
kernel start time -- so a pid the kernel has since given to another process
is not taken for ours -- and what the command wants its operators to find
(log, supervision tag, ...). Written 0640, atomically."""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

MODE = 0o640


def start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(data[data.rfind(")") + 2:].split()[19])  # field 22; comm may hold spaces and ")"


def write(path: Path, **extra) -> Path:
    from imaging_core.io.tables import write_json  # here: `fedvox --help` stays light
    pid = os.getpid()
    write_json(path, {"pid": pid, "start_ticks": start_ticks(pid), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv, **extra}, mode=MODE)
    return path


def read(path: Path) -> dict | None:
    """The pid file's object; None if there is none (or it is not one of ours)."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("pid"), int) else None


def alive(info: dict | None) -> bool:
    """Is the recorded process still running, and still that process?"""
    if not info or not info.get("pid"):
        return False
    ticks = start_ticks(int(info["pid"]))
    if ticks is None:
        return False
    try:  # a zombie has exited
        state = Path(f"/proc/{info['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and (info.get("start_ticks") is None or ticks == info["start_ticks"])
