"""A site's ledger of every masked update it ever sent, across sessions and
runs: the site never contributes two masked versions of one (run, round), nor
two for one received model.

Why: the server names the session, and training is deterministic per (seed,
site, round). A server that opens a second session (or a new run id) for a
round it already saw, over a smaller survivor set, gets two sums whose
difference is one site's update. The per-session state cannot see that; this
file, shared by all sessions of the site, can.

One JSON file per site next to the per-session state directories (0700
directory, 0600 file, replaced atomically); check-and-record happens under an
exclusive lock, so two ClientApp processes cannot both pass the check.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from fl_common.secagg.checks import Received
from fl_common.secagg.errors import ReplayRefused, StateError

from .state import write_private_json

LEDGER_FORMAT = 1


class SiteLedger:
    def __init__(self, ledger_dir: str | os.PathLike, site_id: str):
        self.dir = Path(ledger_dir)
        self.site_id = str(site_id)
        safe = self.site_id.replace("/", "_")
        self.path = self.dir / f"secagg_ledger.{safe}.json"
        self._lock_path = self.dir / f".secagg_ledger.{safe}.lock"

    @contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> dict:
        if not self.path.exists():
            return {"format": LEDGER_FORMAT, "site_id": self.site_id, "rounds": {}, "models": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise StateError(f"{self.path}: unreadable secure-aggregation ledger ({e}); "
                             "refusing to mask without it") from e
        if data.get("format") != LEDGER_FORMAT or data.get("site_id") != self.site_id:
            raise StateError(f"{self.path}: ledger of format {data.get('format')!r} for site "
                             f"{data.get('site_id')!r}, expected format {LEDGER_FORMAT} for "
                             f"site {self.site_id!r}")
        return data

    def entries(self) -> dict:
        with self._locked():
            return self._load()

    def claim(self, got: Received, session: str) -> None:
        """Record that this site masks ``got`` in ``session``; ReplayRefused if
        it already masked that (run, round) or that model, in any session.
        Call before the masked update leaves the site."""
        with self._locked():
            data = self._load()
            key = json.dumps([got.run_id, got.round])
            model = got.model.hex()
            prev = data["rounds"].get(key)
            if prev is not None:
                raise ReplayRefused(
                    f"site {self.site_id!r} already sent a masked update for run "
                    f"{got.run_id!r} round {got.round} (session {prev['session']!r}); a second "
                    "one, over other survivors, would expose its update: refusing")
            prev = data["models"].get(model)
            if prev is not None:
                raise ReplayRefused(
                    f"site {self.site_id!r} already sent a masked update for this model "
                    f"(sha256 {model[:16]}..., run {prev['run']!r} round {prev['round']}, "
                    f"session {prev['session']!r}); training from it again would let two sums "
                    "be differenced: refusing")
            entry = {"run": got.run_id, "round": got.round, "session": str(session),
                     "model": model}
            data["rounds"][key] = entry
            data["models"][model] = entry
            write_private_json(self.dir, self.path, data)
