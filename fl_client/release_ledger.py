"""What this site released, across runs, sessions and restarts: one site-wide
file, because the coordinator names the run and a fresh run id must not buy a
fresh release (the per-run PolicyState cannot see other runs).

- ``local_models``: content hashes of the local-only models this site sent; a
  model leaves at most once ever, whatever run asks for it.
- ``runs``: when each run this site trained in started (``max_runs_per_day``:
  each new run is one more local training, and one more final-stage oracle).
- ``fingerprints``: per run id, the request this site answered in the plan
  stage and when; the reply itself is cached beside it (``fingerprint-<tag>.json``)
  so the same request is answered with the same bytes, which reveal nothing new
  (``max_fingerprints_per_day`` bounds new run ids).

Under ``state_dir/policy`` (0700), 0600 files replaced atomically, every
check-and-record under one exclusive lock. Torch-free (the ClientApp imports it).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path

FORMAT = 1
DAY = 24 * 3600.0


class LedgerFault(Exception):
    """The ledger file is unreadable: the site answers nothing it would record in it."""


def run_tag(run_id: str) -> str:
    """The server's string never names a file."""
    return hashlib.sha256(run_id.encode()).hexdigest()[:24]


def write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked_json(lock: Path, path: Path, load):
    """``load()`` under an exclusive lock on ``lock``; the (changed) value is written back
    to ``path`` (0600, fsync, atomic replace) when the block ends without an error. One
    message at a time, across the site's processes."""
    lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        data = load()
        yield data
        write_private(path, json.dumps(data).encode())
    finally:
        os.close(fd)


class ReleaseLedger:
    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir) / "policy"
        self.path = self.dir / "releases.json"

    def reply_path(self, run_id: str) -> Path:
        return self.dir / f"fingerprint-{run_tag(run_id)}.json"

    def open(self):
        """The ledger's entries, locked; written back when the block ends without an error."""
        return locked_json(self.dir / "releases.lock", self.path, self._load)

    def _load(self) -> dict:
        if not self.path.exists():
            return {"format": FORMAT, "local_models": {}, "runs": {}, "fingerprints": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise LedgerFault(f"{self.path}: unreadable release ledger ({e}); refusing to release "
                              "anything without it") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT or \
                not all(isinstance(data.get(k), dict) for k in ("local_models", "runs", "fingerprints")):
            raise LedgerFault(f"{self.path}: not a release ledger of format {FORMAT}")
        return data


def started_today(entries: dict, now: float) -> int:
    """How many entries (value: a start time, or a dict with "time") lie in the last 24 h."""
    times = [v["time"] if isinstance(v, dict) else v for v in entries.values()]
    return sum(1 for t in times if isinstance(t, (int, float)) and now - DAY < t <= now + 60)


def now() -> float:
    return time.time()
