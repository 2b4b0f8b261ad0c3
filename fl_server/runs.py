"""Operating runs at the coordinator: the server's pid file, a run's state,
stopping it, its log. `fedvox runs ...` (fl_server.runs_cli) and `fedvox
server` (ServerSession) use this; the run directory's files are named in
fl_server.records.

``server.json`` (the pid file) holds the `fedvox server` process's pid, its
kernel start time (so a reused pid is not taken for the server), the
supervision tag its helpers carry (fl_common.supervise: a `stop` that has to
kill finds the SuperLink and the ServerApp by it) and its run log.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from fl_common import exit_codes as X, pidfile
from fl_common.supervise import GROUP_ENV, strip_ansi, tagged_pids
from imaging_core.errors import ImagingError

from .progress import in_flight
from .records import DIR_MODE, SERVER, RunRecord

STOPPED = "stopped"
# run.json status -> what `runs list` says; "running" becomes "interrupted" when no server runs it
RESUMABLE = "interrupted"


def write_pid_file(run_dir: Path, log_path: Path | None, group_tag: str | None) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(run_dir, DIR_MODE)
    return pidfile.write(Path(run_dir) / SERVER,
                         log=str(Path(log_path).absolute()) if log_path else None, group=group_tag)


def server_info(run_dir: Path) -> dict | None:
    return pidfile.read(Path(run_dir) / SERVER)


server_alive = pidfile.alive  # is the recorded `fedvox server` process still that process?


def mark_stopped(run_dir: Path, reason: str) -> bool:
    """A run record that still says "running" now says "stopped" (its server is gone)."""
    try:
        rec = RunRecord.open(run_dir)
    except ImagingError:
        return False
    if rec.info.get("status") != "running":
        return False
    rec = RunRecord(run_dir)
    rec.finish(STOPPED, reason=reason)
    rec.event("run_done", status=STOPPED, reason=reason)
    return True


class ServerSession:
    """Around `fedvox server`'s run: the pid file, the progress display, and on
    SIGTERM / Ctrl-C (after the process group has stopped everything) the run
    record marked stopped; ``interrupted`` then tells the caller to exit
    INTERRUPTED. Enter it before the ProcessGroup, so that one stops first."""

    def __init__(self, run_dir: Path, log_path: Path | None, group_tag: str | None, progress: bool = True):
        self.run_dir, self.log_path, self.group_tag = Path(run_dir), log_path, group_tag
        self.progress = None
        if progress:
            from .progress import Progress
            self.progress = Progress(self.run_dir)
        self.interrupted = False

    def __enter__(self) -> "ServerSession":
        if self.log_path is not None:  # the server's work directory: its logs and the SuperLink's state
            work = Path(self.log_path).parent
            work.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            os.chmod(work, DIR_MODE)
        write_pid_file(self.run_dir, self.log_path, self.group_tag)
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, typ, exc, tb) -> bool:
        if self.progress is not None:
            self.progress.__exit__(typ, exc, tb)
        if typ is not None and issubclass(typ, (SystemExit, KeyboardInterrupt)):
            what = "SIGTERM" if typ is SystemExit else "Ctrl-C"
            mark_stopped(self.run_dir, f"the server was stopped ({what}); `fedvox server --run-dir "
                                       f"{self.run_dir}` resumes it after its last complete round")
            self.interrupted = True
            return True
        return False


# ---- what a run is doing -------------------------------------------------------------

def is_run_dir(d: Path) -> bool:
    return (d / "run.json").is_file() or (d / SERVER).is_file()


def find_runs(paths: list[Path]) -> list[Path]:
    """Each path that is a run directory, and the run directories right under the others."""
    out: list[Path] = []
    for p in paths:
        if is_run_dir(p):
            out.append(p)
        elif p.is_dir():
            out += sorted(d for d in p.iterdir() if d.is_dir() and is_run_dir(d))
        else:
            raise ImagingError(p, "not found: give a run directory or a directory of runs")
    return out


def _mtime(paths) -> float | None:
    times = [p.stat().st_mtime for p in paths if p.exists()]
    return max(times) if times else None


def summary(run_dir: Path) -> dict:
    """One run: state, rounds done / planned, best held-out metric, last update."""
    run_dir = Path(run_dir)
    info = server_info(run_dir)
    alive = server_alive(info)
    if not (run_dir / "run.json").is_file():  # the server is up, the ServerApp not yet started
        return {"run": str(run_dir), "state": "starting" if alive else "not started", "server_pid": (
            info or {}).get("pid") if alive else None, "rounds_done": 0, "rounds": None}
    rec = RunRecord.open(run_dir)
    status = str(rec.info.get("status", "unknown"))
    state = RESUMABLE if status == "running" and not alive else status
    best_round, best = rec.best() if rec.rounds else (None, None)
    return {"run": str(run_dir), "run_id": rec.run_id, "state": state,
            "server_pid": info.get("pid") if alive else None,
            "rounds_done": rec.last_round, "rounds": rec.info.get("rounds"),
            "metric": rec.best_metric, "best_round": best_round,
            "best": None if best is None or best != best else best,
            "reason": rec.info.get("reason"),
            "updated": _mtime([run_dir / n for n in ("run.json", "state.json", "events.jsonl")])}


def current_round(run_dir: Path) -> dict | None:
    """The latest round the event log names: each site's state in it, and what is in flight."""
    rec = RunRecord.open(run_dir)
    events, _ = rec.events(0)
    starts = [i for i, e in enumerate(events) if e.get("event") == "round_start"]
    if not starts:
        return None
    evs = events[starts[-1]:]
    r = evs[0]["round"]
    sites: dict[str, dict] = {name: {} for name in rec.site_names}  # known from earlier rounds: pending so far
    done = None
    for e in evs:
        if e.get("event") == "stage_done":
            for s in e.get("ok") or []:
                sites.setdefault(s, {})[e["stage"]] = "ok"
            for f in e.get("failed") or []:
                sites.setdefault(str(f.get("site")), {})[e["stage"]] = f"failed: {f.get('error')}"
        elif e.get("event") == "round_done":
            done = e
    return {"round": r, "rounds": evs[0].get("rounds"), "sites_sampled": evs[0].get("sites"),
            "started": evs[0].get("t"), "sites": sites,
            "status": (done or {}).get("status", "in progress"),
            "doing": None if done else in_flight(evs[-1])}


def status(run_dir: Path) -> dict:
    """`runs status`: the summary, the current round site by site, every round's row."""
    s = summary(run_dir)
    if (Path(run_dir) / "run.json").is_file():
        rec = RunRecord.open(run_dir)
        metric = f"central/{rec.best_metric}"
        s["rounds_table"] = [{"round": x["round"], "status": x.get("status", "init"),
                              "sites": x.get("sites_aggregated"), "failures": x.get("n_failures"),
                              "seconds": x.get("seconds"), rec.best_metric: x.get(metric)}
                             for x in sorted(rec.rounds, key=lambda x: x["round"])]
        s["current_round"] = current_round(run_dir)
    info = server_info(run_dir)
    s["log"] = (info or {}).get("log")
    return s


# ---- stopping --------------------------------------------------------------------------

@dataclass
class StopResult:
    code: int
    message: str


def _wait_gone(info: dict, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while server_alive(info):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def stop(run_dir: Path, timeout: float = 60.0) -> StopResult:
    """SIGTERM the run's `fedvox server` (by its recorded pid): it stops the
    SuperLink and the ServerApp and marks the run stopped. After ``timeout``
    seconds it and every helper carrying its supervision tag are killed, and
    the run record is marked here."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise ImagingError(run_dir, "not a run directory (no run.json or server.json)")
    info = server_info(run_dir)
    if not server_alive(info):
        return StopResult(X.NOT_RUNNING, f"{run_dir}: no server is running this run "
                                         f"(state: {summary(run_dir)['state']})")
    pid, t0 = int(info["pid"]), time.monotonic()
    os.kill(pid, signal.SIGTERM)
    clean = _wait_gone(info, timeout)
    if not clean:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(info, 5.0)
    # helpers left behind (a killed server cannot stop them) go by their tag
    left = tagged_pids(GROUP_ENV, info["group"]) if info.get("group") else set()
    for p in left:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    mark_stopped(run_dir, f"stopped by `fedvox runs stop` (server pid {pid})")
    how = "stopped cleanly" if clean else f"did not stop within {timeout:.0f} s: killed"
    extra = f"; {len(left)} leftover helper process(es) killed" if left else ""
    return StopResult(X.OK, f"{run_dir}: server pid {pid} {how} after {time.monotonic() - t0:.1f} s{extra}")


# ---- the log ---------------------------------------------------------------------------

def log_path(run_dir: Path) -> Path:
    info = server_info(Path(run_dir))
    if not info or not info.get("log"):
        raise ImagingError(Path(run_dir) / SERVER, "missing: this run was not started by "
                           "`fedvox server`, so no run log is recorded (`fedvox demo`: WORK/server/run.log)")
    return Path(info["log"])


def tail(path: Path, lines: int) -> tuple[str, int]:
    """The last ``lines`` lines of ``path`` and its size (where following goes on)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 256 * 1024))
        data = f.read()
    text = strip_ansi(data.decode(errors="replace")).splitlines()
    return "\n".join(text[-lines:]) if lines > 0 else "", size


def follow(path: Path, offset: int, info: dict | None, timeout: float, out, poll: float = 0.5) -> int:
    """Copy what is appended to ``path`` to ``out`` while the server lives,
    for at most ``timeout`` seconds; returns NOT_RUNNING if it was not running."""
    if not server_alive(info):
        return X.NOT_RUNNING
    deadline = time.monotonic() + timeout
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read()
            if chunk:
                out.write(strip_ansi(chunk.decode(errors="replace")))
                out.flush()
            if not server_alive(info) or time.monotonic() > deadline:
                chunk = f.read()
                if chunk:
                    out.write(strip_ansi(chunk.decode(errors="replace")))
                return X.OK
            time.sleep(poll)
