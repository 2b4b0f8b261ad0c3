"""Per-round progress of a run while `fedvox server` / `fedvox demo` run it.

The source is the run record's event log (RunRecord.event, written by the
round loop at every stage), not Flower's log: one line per stage -- sites
connected, each round's train and evaluate stages (sites ok / failed, seconds),
the round's outcome with its held-out metric, the run's end. On a terminal the
lines are styled (rich) under a spinner naming the stage in flight; otherwise
(a log file, journald) they are plain, timestamped and flushed one by one.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, TextIO

from imaging_core.errors import ImagingError

from .records import RunRecord

POLL_S = 1.0


def _num(v, nd: int = 4) -> str:
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v else "n/a"


def _round(ev: dict) -> str:
    return f"round {ev.get('round')}/{ev.get('rounds')}" if ev.get("rounds") else f"round {ev.get('round')}"


def describe(ev: dict) -> tuple[str, str] | None:
    """(style, text) of one event's line; None for an event it does not know."""
    kind = ev.get("event")
    if kind == "sites_connected":
        first = ev.get("first_round", 1)
        resumed = f", resuming at round {first}" if first and first > 1 else ""
        return "cyan", f"{ev.get('sites')} sites connected; {ev.get('rounds')} rounds{resumed}"
    if kind == "round_start":
        return "cyan", f"{_round(ev)}: training at {ev.get('sites')} sites"
    if kind == "stage_done":
        failed = ev.get("failed") or []
        text = (f"round {ev.get('round')}: {ev.get('stage')} done in {_num(ev.get('seconds'), 1)} s: "
                f"{len(ev.get('ok') or [])} ok ({', '.join(ev.get('ok') or []) or '-'})")
        if failed:
            text += f", {len(failed)} failed (" + "; ".join(
                f"{f.get('site')}: {str(f.get('error'))[:80]}" for f in failed) + ")"
        return ("yellow" if failed else "green"), text
    if kind == "round_done":
        if ev.get("status") != "ok":
            return "red", f"{_round(ev)} {ev.get('status')}: {ev.get('reason') or ''} (global model unchanged)"
        held = (f"; held-out {ev.get('metric')} {_num(ev.get('value'))}" if ev.get("value") is not None
                else "; held-out evaluation running beside the next round")
        return "bold green", (f"{_round(ev)} ok in {_num(ev.get('seconds'), 1)} s: {ev.get('sites')} sites "
                              f"aggregated, {ev.get('failed')} failed{held}")
    if kind == "central_done":  # the coordinator's held-out score, evaluated beside the next round
        return "green", (f"round {ev.get('round')}: held-out {ev.get('metric')} {_num(ev.get('value'))} "
                         f"({_num(ev.get('seconds'), 1)} s)")
    if kind == "run_done":
        if ev.get("status") == "completed":
            return "bold green", (f"run completed: best held-out {ev.get('metric')} {_num(ev.get('value'))} "
                                  f"at round {ev.get('best_round')}")
        return "bold red", f"run {ev.get('status')}: {ev.get('reason') or ''}"
    return None


def in_flight(ev: dict | None) -> str | None:
    """What the run is doing after event ``ev`` (for the spinner and `runs status`)."""
    kind = (ev or {}).get("event")
    if kind == "sites_connected":
        return "setting up the round (secure aggregation keys, central evaluation)"
    if kind == "round_start":
        return f"round {ev['round']}: sites training"
    if kind == "stage_done" and ev.get("stage") == "train":
        return f"round {ev['round']}: sites evaluating"
    if kind == "stage_done":
        return f"round {ev['round']}: aggregating and evaluating on the held-out cases"
    if kind == "round_done":
        return f"after round {ev['round']}: next round or the final evaluation"
    return None


class Follower:
    """A thread that hands each new event of ``run_dir`` to ``sink`` as it lands.
    ``from_start=False`` skips what a resumed run logged before this start."""

    def __init__(self, run_dir, sink: Callable[[dict], None], from_start: bool = False,
                 poll: float = POLL_S):
        self.run_dir, self.sink, self.poll = run_dir, sink, poll
        self.offset = 0 if from_start else self._end()
        self.last: dict | None = None
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._loop, daemon=True, name="fedvox-progress")

    def _end(self) -> int:
        try:
            return RunRecord.open(self.run_dir).events(0)[1]
        except ImagingError:
            return 0

    def drain(self) -> None:
        try:
            events, self.offset = RunRecord.open(self.run_dir).events(self.offset)
        except ImagingError:  # the server has not started the run yet
            return
        for ev in events:
            self.last = ev
            self.sink(ev)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            self.drain()

    def __enter__(self) -> "Follower":
        self._th.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._th.join(timeout=self.poll + 5)
        self.drain()  # the last lines a finished run wrote


def line_printer(out: TextIO | None = None, console=None) -> Callable[[dict], None]:
    """A sink: styled lines through ``console`` (rich) when given, else plain
    timestamped lines on ``out`` (default stdout), flushed each."""
    def sink(ev: dict) -> None:
        d = describe(ev)
        if d is None:
            return
        style, text = d
        if console is not None:
            console.print(f"[{style}]{text}[/]", highlight=False)
            return
        stream = out or sys.stdout
        stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("t") or time.time()))
        print(f"{stamp} fedvox: {text}", file=stream, flush=True)
    return sink


class Progress:
    """What `fedvox server` shows: rich lines under a spinner on a terminal,
    plain lines otherwise. A context manager around the run."""

    def __init__(self, run_dir, out: TextIO | None = None):
        self.out = out or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self._status = None
        if self.tty:
            from rich.console import Console
            self.console = Console(file=self.out)
            sink = line_printer(console=self.console)
        else:
            self.console, sink = None, line_printer(self.out)
        self.follower = Follower(run_dir, self._sink(sink))

    def _sink(self, sink):
        def both(ev: dict) -> None:
            sink(ev)
            if self._status is not None:
                self._status.update(in_flight(ev) or "waiting for the run")
        return both

    def __enter__(self) -> "Progress":
        if self.tty:
            self._status = self.console.status("waiting for the sites and the first round")
            self._status.start()
        self.follower.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.follower.__exit__(*exc)
        if self._status is not None:
            self._status.stop()
