"""The run directory: what a federated run leaves behind, and how it resumes.

    run.json                  config, mode (secure aggregation, threshold), status
    rounds.json / rounds.csv  one row per round: central (held-out) metrics, sites, failures
    sites.json / sites.csv    one row per round and site: training and validation scalars
    checkpoints/round-NNNN.pt global weights + server optimiser state after round N (+ .sha256)
    global_best.pt / global_final.pt   state dicts of the best and final global models
    state.json                the last completed round (written last, atomically)

Every file is written atomically, and state.json only after the round's
checkpoint, so a crash at any point resumes from a complete round.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from imaging_core.errors import ImagingError
from imaging_core.io.atomic import write_bytes_atomic


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o).__name__)


def read_json(path: Path, default=None):
    """A run-directory JSON file; ``default`` if absent (an error if no default)."""
    if not path.is_file():
        if default is not None:
            return default
        raise ImagingError(path, "missing from the run directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ImagingError(path, f"not valid JSON ({e})") from None


def write_json(path: Path, obj) -> None:
    # NaN stays NaN (json allows it as an extension; Python and pandas read it back)
    write_bytes_atomic(path, json.dumps(obj, indent=1, default=_json_default).encode())


def write_csv(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k, v in r.items() if k not in keys and not isinstance(v, (dict, list))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in keys})
    write_bytes_atomic(path, buf.getvalue().encode())


class RunRecord:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict] = self._read("rounds.json", [])
        self.sites: list[dict] = self._read("sites.json", [])
        self.info: dict = self._read("run.json", {})

    def _read(self, name: str, default):
        p = self.dir / name
        if not p.exists():
            return default
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ImagingError(p, f"run record is not valid JSON ({e})") from None

    @property
    def last_round(self) -> int:
        return int(self._read("state.json", {}).get("last_round", 0))

    def start(self, info: dict) -> None:
        self.info = {**self.info, **info, "status": "running"}
        write_json(self.dir / "run.json", self.info)

    def finish(self, status: str = "completed", **extra) -> None:
        self.info.update(status=status, **extra)
        write_json(self.dir / "run.json", self.info)

    def add_round(self, row: dict, site_rows: list[dict]) -> None:
        # a replayed round (after a restart) replaces what the interrupted try wrote
        r = row["round"]
        self.rounds = [x for x in self.rounds if x["round"] != r] + [row]
        self.sites = [x for x in self.sites if x["round"] != r] + site_rows
        write_json(self.dir / "rounds.json", self.rounds)
        write_csv(self.dir / "rounds.csv", self.rounds)
        write_json(self.dir / "sites.json", self.sites)
        write_csv(self.dir / "sites.csv", self.sites)

    def commit_round(self, r: int) -> None:
        write_json(self.dir / "state.json", {"last_round": r})

    def checkpoint_path(self, r: int) -> Path:
        return self.dir / "checkpoints" / f"round-{r:04d}.pt"

    def best(self, metric: str) -> tuple[int, float]:
        vals = [(x["round"], x.get(f"central/{metric}", float("nan"))) for x in self.rounds]
        vals = [(r, v) for r, v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
        return max(vals, key=lambda t: t[1]) if vals else (0, float("nan"))
