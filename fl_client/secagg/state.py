"""A site's secure-aggregation state on disk: its keys, key epoch, the setup
it agreed to and, per round, what it revealed (the ledger that stops it from
revealing both shares of one peer). One JSON file per (site, run), replaced
atomically, so a restarted ClientApp process carries on where the last one
stopped."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from fl_common.crypto import secagg as crypto
from fl_common.secagg.errors import StateError

STATE_FILE = "secagg_state.json"
STATE_FORMAT = 1
KEEP_ROUNDS = 16        # rounds of reveal records kept on disk (older: refused)


class SiteState:
    """The state dict (``data``) of one site in one run, in ``state_dir``
    (0700 directory, 0600 file)."""

    def __init__(self, state_dir: str | os.PathLike, run_id: str, site_id: str):
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_FILE
        self.run_id, self.site_id = run_id, site_id
        self.data = self._load() if self.path.exists() else self._fresh()

    def _fresh(self) -> dict:
        sk, _ = crypto.x25519_keypair()
        return {"format": STATE_FORMAT, "run_id": self.run_id, "site_id": self.site_id,
                "channel_sk": sk.hex(), "epoch": 0, "mask_sk": None, "setup": None,
                "last_round": 0, "rounds": {}}

    def _load(self) -> dict:
        try:
            state = json.loads(self.path.read_text())
        except (OSError, ValueError) as e:
            raise StateError(f"{self.path}: unreadable secure-aggregation state ({e})") from e
        if state.get("format") != STATE_FORMAT:
            raise StateError(f"{self.path}: state format {state.get('format')!r}, "
                             f"expected {STATE_FORMAT}")
        if state.get("run_id") != self.run_id or state.get("site_id") != self.site_id:
            raise StateError(f"{self.path}: state belongs to site "
                             f"{state.get('site_id')!r} run {state.get('run_id')!r}, not "
                             f"site {self.site_id!r} run {self.run_id!r}")
        return state

    def save(self) -> None:
        write_private_json(self.dir, self.path, self.data)


def write_private_json(directory: Path, path: Path, data) -> None:
    """Write ``data`` as JSON atomically: temp file (0600) in the same 0700
    directory, fsync, os.replace, fsync the directory; a crash leaves old or new."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=".secagg-", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o600)  # mkstemp already uses 0600; be explicit
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
