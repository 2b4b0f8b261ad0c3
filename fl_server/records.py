"""The run directory: what a federated run leaves behind, and how it resumes.

    run.json                  config, mode (secure aggregation, threshold), status
    rounds.json / rounds.csv  one row per round: central (held-out) metrics, sites, failures
    sites.json / sites.csv    one row per round and site: training and validation scalars
    final_sites.json / .csv   each site's evaluation of the final global model (and its local-only one)
    held_out_cases.json       (optional) the cross-site stage's held-out per-case rows by model hash
    cross_site.json           (optional) every model on every evaluation set: {"rows": [{"model",
                              "eval_set", "cases", "dice_<c>", "hd95_<c>", "missed_<c>", ...}],
                              "per_case": {metric: [values]}, ...}], "consent": {site: true if its
                              local model went to the other sites}, "failures": [...]}
    checkpoints/round-NNNN.pt global weights + server optimiser state after round N (+ .sha256)
    global_best.pt / global_final.pt   state dicts of the best and final global models
                              (run.json "files": the SHA-256 of each of these, as written)
    state.json                the last completed round (written last, atomically)
    run_manifest.json         the model files' hashes, run id, rounds and plan/spec hashes,
                              signed with the provision's run-record key (fl_server.record_manifest)
    spec.json                 what `fedvox server` told the ServerApp (fl_server.deploy)
    report/                   what `fedvox report` writes
    tensorboard/              TensorBoard event files of the records (fl_server/tracking.py)
    site_pseudonyms.json      real site name -> "site-N" for exported bundles (0600)
    events.jsonl              one line per round-loop stage as it happens (progress, `runs status`)
    server.json               the `fedvox server` process that runs it: pid, start time, log (`runs`)

The directory is 0750 and the event log 0640: run records name the sites and
their metrics, so other local users do not read them.

This module is the only code that knows these names and what the rows mean;
report, export and demo read a run through ``RunRecord.open``.

Every file is written atomically, and state.json only after the round's
checkpoint, so a crash at any point resumes from a complete round.

Model and checkpoint files are written only through ``save_model`` /
``save_round_checkpoint``, which record the file's SHA-256 in run.json, and
read through ``load_model`` / ``load_round_checkpoint``, which refuse a file
whose hash is not the recorded one (a .sha256 sidecar alone is no defence:
whoever swaps the file writes the sidecar too). Loading is data-only
(imaging_core.train.checkpoint). run.json is not signed, so a writer with the
run-record key (``signer``, the server) also signs the hashes into
run_manifest.json, and a reader given its public half (``verify_key``,
`fedvox export`) loads only files with the signed hash; a writer resuming a
signed run takes the hashes from the verified manifest, not from run.json.

Which model a number belongs to: rounds.json's round-t central metrics are
for the global model after round t (round 0 = the initial model); a round-t
row of sites.json evaluates the global model the round started from (after
round t-1, ``site_row_model_round``) and the site's local-only model after t
rounds; final_sites.json has both models after the last round.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from fl_common.keys import CENTRAL, GLOBAL, LOCAL, TRAIN, VAL
from imaging_core.errors import ImagingError
from imaging_core.io.tables import read_json, write_csv, write_json

from .record_queries import (CROSS_SITE, DEFAULT_BEST_METRIC, EVENTS, FINAL_SITES, RunQueries,  # noqa: F401
                             _finite, site_row_model_round, strip_prefix)

__all__ = ["RunRecord", "read_json", "write_json", "write_csv", "site_row_model_round",
           "CENTRAL", "TRAIN", "VAL", "GLOBAL", "LOCAL", "DEFAULT_BEST_METRIC"]

RUN, ROUNDS, SITES, STATE = "run.json", "rounds.json", "sites.json", "state.json"
HELD_OUT_CASES = "held_out_cases.json"
MODEL_FILES = {"best": "global_best.pt", "final": "global_final.pt"}
FILES = "files"  # run.json: {path relative to the run directory: SHA-256} of every model/checkpoint written
PSEUDONYMS = "site_pseudonyms.json"
PLAN, HARMONISATION = "plan.json", "harmonisation.json"   # fedvox plan / fedvox check (fl_server.plan)
SPEC = "spec.json"
MANIFEST = "run_manifest.json"
# Beside the model files: the plan ships in the bundle, the round and site rows are the figures
# its metadata advertises, the spec says how the run ran.
SIGNED_RECORDS = (PLAN, ROUNDS, SITES, SPEC)
# What a reader checks of those: all but the spec. Each `fedvox server` start rewrites spec.json
# before its ServerApp re-signs, so a start that fails first leaves it unlike the signed one with
# nothing wrong; and nothing is read from it after the run (its hash stays signed for audit).
CHECKED_RECORDS = (PLAN, ROUNDS, SITES)
# run.json's fields that decide what an export ships (the network, its labels, the pipeline
# before and after it, the config it reads and that config's hash): signed, so whoever can
# write the run directory cannot swap the pipeline under a signed model.
SIGNED_SETTINGS = ("federation", "federation_path", "federation_sha256", "data_base", "labels", "model",
                   "postprocess", "preprocess", "preprocess_source", "evaluation_space", "best_round")
REPORT_DIR = "report"
TENSORBOARD_DIR = "tensorboard"
COORDINATOR_CACHE = "coordinator-cache"
SERVER = "server.json"
DIR_MODE, LOG_MODE = 0o750, 0o640


class RunRecord(RunQueries):
    """Writer (the server's round loop: ``RunRecord(dir)``) and read-only view
    (``RunRecord.open(dir)``) of one run directory."""

    def __init__(self, run_dir: str | Path, _read_only: bool = False, signer=None):
        self.dir = Path(run_dir)
        self.read_only = _read_only
        self.signer = signer        # a record_manifest.RecordKey with its private half, or None
        self._manifest: dict | None = None  # the signed manifest as verified or last signed
        if not _read_only:
            self.dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            os.chmod(self.dir, DIR_MODE)  # also when it existed, or the umask widened mkdir's mode
        self.rounds: list[dict] = read_json(self.dir / ROUNDS, [])
        self.sites: list[dict] = read_json(self.dir / SITES, [])
        self.info: dict = read_json(self.dir / RUN, {})
        if signer is not None:
            self._adopt_manifest()

    @classmethod
    def open(cls, run_dir: str | Path, verify_key=None) -> "RunRecord":
        """An existing run directory, read only (an error naming it if it is none).
        ``verify_key`` (a record_manifest.RecordKey): refused unless the run's manifest is
        signed by it and run.json's run id, rounds and plan.json are as signed;
        models then load only with the signed hash.
        The one file a reader adds is the pseudonym map (``pseudonyms``), kept by export."""
        from . import record_manifest as rm
        d = Path(run_dir)
        if not d.is_dir():
            raise ImagingError(d, "run directory not found")
        if not (d / RUN).is_file():
            raise ImagingError(d / RUN, "missing: not a run directory")
        rec = cls(d, _read_only=True)
        if verify_key is not None:
            rec._manifest = rm.read_verified(d / MANIFEST, verify_key)
            rm.check_records(d, rec._manifest, rec.info, RUN, CHECKED_RECORDS, SIGNED_SETTINGS)
        return rec

    def _adopt_manifest(self) -> None:
        # A resumed run signs on from what it signed before, never from run.json's hashes,
        # which anyone who can write the directory could have edited meanwhile.
        from .record_manifest import adopt
        self._manifest = adopt(self.dir / MANIFEST, self.signer, self.info, self.dir / RUN, FILES)
        if self._manifest is not None:
            self.info[FILES] = dict(self._manifest["files"])

    def _sign(self) -> None:
        """Re-sign the manifest if what it covers changed (no key: nothing to sign)."""
        if self.signer is not None:
            from .record_manifest import resign
            self._manifest = resign(self.dir, MANIFEST, self.signer, self._manifest, self.info, FILES,
                                    SIGNED_RECORDS, SIGNED_SETTINGS)

    # ----- writing (the round loop) ----------------------------------------
    def _writable(self) -> None:
        if self.read_only:
            raise RuntimeError(f"{self.dir}: opened read only")

    @property
    def last_round(self) -> int:
        """The last committed round (what a restarted server resumes after)."""
        return int(read_json(self.dir / STATE, {}).get("last_round", 0))

    def start(self, info: dict) -> None:
        self._writable()
        self.info = {**self.info, **info, "status": "running"}
        write_json(self.dir / RUN, self.info)
        self._sign()  # run id, rounds and spec.json as this session started

    def finish(self, status: str = "completed", **extra) -> None:
        self._writable()
        self.info.update(status=status, **extra)
        write_json(self.dir / RUN, self.info)
        self._sign()

    def add_round(self, row: dict, site_rows: list[dict]) -> None:
        self._writable()
        # a replayed round (after a restart) replaces what the interrupted try wrote
        r = row["round"]
        self.rounds = [x for x in self.rounds if x["round"] != r] + [row]
        self.sites = [x for x in self.sites if x["round"] != r] + site_rows
        write_json(self.dir / ROUNDS, self.rounds)
        write_csv(self.dir / "rounds.csv", self.rounds)
        write_json(self.dir / SITES, self.sites)
        write_csv(self.dir / "sites.csv", self.sites)
        self._sign()  # the figures a bundle advertises come from these rows

    def add_central(self, r: int, scores: dict, seconds: float | None = None) -> None:
        """Round ``r``'s held-out metrics, added to its row when the (background)
        evaluation of the model after round r is done."""
        self._writable()
        row = self.round_row(r)
        if not row:
            raise ValueError(f"{self.dir / ROUNDS}: no round {r} row to add held-out metrics to")
        row.update({f"{CENTRAL}{k}": v for k, v in scores.items()})
        if seconds is not None:
            row["central_seconds"] = seconds
        write_json(self.dir / ROUNDS, self.rounds)
        write_csv(self.dir / "rounds.csv", self.rounds)
        self._sign()

    def add_final_sites(self, rows: list[dict], failures: list[dict]) -> None:
        """Each site's evaluation of the final global model."""
        self._writable()
        write_json(self.dir / FINAL_SITES, {"sites": rows, "failures": failures})
        write_csv(self.dir / "final_sites.csv", rows)

    def add_held_out_cases(self, held: dict[str, dict]) -> None:
        """The held-out per-case rows of the cross-site stage, by model hash
        ({hash: {"name", "cases": [case_metrics + case_id]}}): the report reuses them."""
        self._writable()
        write_json(self.dir / HELD_OUT_CASES, {"models": held})

    @property
    def held_out_cases(self) -> dict[str, list[dict]]:
        """model hash -> the held-out per-case rows the run recorded ({} when none)."""
        doc = read_json(self.dir / HELD_OUT_CASES, {})
        return {h: m["cases"] for h, m in doc.get("models", {}).items() if isinstance(m, dict) and "cases" in m}

    def add_cross_site(self, rows: list[dict], consent: dict[str, bool], failures: list[dict]) -> None:
        """The cross-site matrix (fl_server.cross_site): rows of model x evaluation set
        (``per_case``: metric -> values in case order, where the site allowed them),
        each site's consent to share its local model, and what failed."""
        self._writable()
        write_json(self.dir / CROSS_SITE, {"rows": rows, "consent": consent, "failures": failures})

    def event(self, kind: str, **fields) -> None:
        """Append one progress event (a JSON line, ``kind`` and wall time ``t`` added).
        One short O_APPEND write per line, so a reader never sees half of one."""
        self._writable()
        line = json.dumps({"event": kind, "t": round(time.time(), 3), **fields}, default=str) + "\n"
        fd = os.open(self.dir / EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    def save_plan(self, plan: dict) -> Path:
        """plan.json: the [preprocess]/[sampling]/[model] tables and their reasons."""
        self._writable()
        write_json(self.dir / PLAN, plan)
        self._sign()
        return self.dir / PLAN

    def save_harmonisation(self, table: dict) -> Path:
        """harmonisation.json: every site's summary row and the flags."""
        self._writable()
        write_json(self.dir / HARMONISATION, table)
        return self.dir / HARMONISATION

    @property
    def plan(self) -> dict | None:
        return read_json(self.dir / PLAN, {}) or None

    @property
    def preprocess(self) -> dict | None:
        """The [preprocess] table the run trained and evaluated with (the plan's under "auto";
        run.json ``preprocess_source`` says which); None for runs before it was recorded."""
        pre = self.info.get("preprocess")
        return pre if isinstance(pre, dict) else None

    @property
    def harmonisation(self) -> dict | None:
        return read_json(self.dir / HARMONISATION, {}) or None

    def commit_round(self, r: int) -> None:
        self._writable()
        write_json(self.dir / STATE, {"last_round": r})

    def checkpoint_path(self, r: int) -> Path:
        """Global weights (flat) + server state after round ``r``: what a resume loads."""
        return self.dir / "checkpoints" / f"round-{r:04d}.pt"

    def _save(self, state: dict, path: Path) -> Path:
        from imaging_core.train.checkpoint import save_checkpoint
        self._writable()
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = save_checkpoint(state, path)
        self.info.setdefault(FILES, {})[path.relative_to(self.dir).as_posix()] = digest
        write_json(self.dir / RUN, self.info)
        self._sign()  # after run.json: a crash between leaves the file unsigned, so unloadable, never trusted
        return path

    def save_model(self, which: str, state: dict) -> Path:
        """Write the best or final global model's state dict; its hash goes into run.json."""
        return self._save(state, self.model_file(which))

    def save_round_checkpoint(self, r: int, state: dict) -> Path:
        """Write round ``r``'s checkpoint (what a resume loads); its hash goes into run.json."""
        return self._save(state, self.checkpoint_path(r))

    def recorded_hash(self, path: Path) -> str | None:
        try:
            rel = Path(path).relative_to(self.dir).as_posix()
        except ValueError:
            return None
        return (self.info.get(FILES) or {}).get(rel)

    def load(self, path: Path) -> dict:
        """A model or checkpoint file of this run, refused unless its SHA-256 is the one
        recorded (the signed one when the record was verified or is being signed)."""
        from imaging_core.train.checkpoint import load_checkpoint
        if self._manifest is not None:
            from .record_manifest import check_file
            return load_checkpoint(path, sha256=check_file(Path(path), self.dir, self._manifest, MANIFEST))
        digest = self.recorded_hash(path)
        if digest is None:
            raise ImagingError(path, f"not in the run record ({RUN} {FILES!r} has no SHA-256 for it); "
                               "refusing to load a file the run did not record")
        return load_checkpoint(path, sha256=digest)

    def load_model(self, which: str | int = "best") -> dict:
        """The ``which`` global model (see ``model_path``), hash-checked against the record."""
        return self.load(self.model_path(which))

    def load_round_checkpoint(self, r: int) -> dict:
        return self.load(self.checkpoint_path(r))

    def model_file(self, which: str) -> Path:
        """Where the state dict of the best or final global model is written."""
        if which not in MODEL_FILES:
            raise ValueError(f"which must be one of {sorted(MODEL_FILES)}, got {which!r}")
        return self.dir / MODEL_FILES[which]

    # ----- files beside the records (their locations live here too) -----------
    @property
    def report_dir(self) -> Path:
        return self.dir / REPORT_DIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.dir / TENSORBOARD_DIR

    @property
    def coordinator_cache(self) -> Path:
        return self.dir / COORDINATOR_CACHE

    def pseudonyms(self, names: list[str]) -> dict[str, str]:
        """Real site name -> "site-N", stable across exports (new sites get the next numbers).
        The mapping stays with the coordinator (0600): it re-identifies sites."""
        path = self.dir / PSEUDONYMS
        mapping = read_json(path, {}) if path.exists() else {}
        n = len(mapping)
        for s in names:
            if s not in mapping:
                n += 1
                mapping[s] = f"site-{n}"
        write_json(path, mapping, mode=0o600)
        return mapping
