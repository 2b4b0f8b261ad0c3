"""`fedvox runs list | status | log | stop`: the coordinator's view of its
runs (fl_server.runs does the work; this module is the command line and the
printing). Exit statuses: fl_common.exit_codes."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from fl_common import exit_codes as X


def _when(t) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _best(s: dict) -> str:
    if s.get("best") is None:
        return "-"
    return f"{s['metric']} {s['best']:.4f} (round {s['best_round']})"


def _cmd_list(a) -> int:
    from .runs import find_runs, summary
    rows = [summary(d) for d in find_runs([Path(p) for p in a.paths or ["."]])]
    if a.json:
        print(json.dumps(rows, indent=1))
        return X.OK
    if not rows:
        print("no run directories found", file=sys.stderr)
        return X.OK
    w = max(len(r["run"]) for r in rows)
    print(f"{'RUN':<{w}}  {'STATE':<12} {'ROUNDS':>7}  {'UPDATED':<19}  BEST")
    for r in rows:
        rounds = f"{r['rounds_done']}/{r['rounds'] if r['rounds'] is not None else '?'}"
        print(f"{r['run']:<{w}}  {r['state']:<12} {rounds:>7}  {_when(r.get('updated')):<19}  {_best(r)}")
    return X.OK


def _cmd_status(a) -> int:
    from .runs import is_run_dir, status
    from imaging_core.errors import ImagingError
    if not is_run_dir(Path(a.run)):
        raise ImagingError(Path(a.run), "not a run directory (no run.json or server.json)")
    s = status(Path(a.run))
    if a.json:
        print(json.dumps(s, indent=1))
        return X.OK
    rounds = f"{s['rounds_done']}/{s['rounds'] if s['rounds'] is not None else '?'}"
    print(f"run {s['run']} ({s.get('run_id', '-')}): {s['state']}"
          + (f", server pid {s['server_pid']}" if s.get("server_pid") else ""))
    print(f"  rounds complete {rounds}; best {_best(s)}; updated {_when(s.get('updated'))}")
    if s.get("reason"):
        print(f"  reason: {s['reason']}")
    cur = s.get("current_round")
    if cur:
        doing = f" -- {cur['doing']}" if cur.get("doing") and s["state"] == "running" else ""
        print(f"  round {cur['round']}: {cur['status']} ({cur['sites_sampled']} sites sampled, "
              f"started {_when(cur.get('started'))}){doing}")
        for site, st in sorted(cur["sites"].items()):
            print(f"    {site:<20} train {st.get('train', 'pending'):<10} evaluate {st.get('evaluate', 'pending')}")
    for x in s.get("rounds_table", []):
        m = x.get(s.get("metric"))
        dash = lambda v: "-" if v is None else v  # noqa: E731
        score = f"  {s.get('metric')} {m:.4f}" if isinstance(m, (int, float)) else ""
        print(f"  round {x['round']:>3}: {x['status']:<11} sites {dash(x['sites']):>3}  "
              f"failures {dash(x['failures']):>3}{score}")
    if s.get("log"):
        print(f"  log: {s['log']}")
    return X.OK


def _cmd_log(a) -> int:
    from .runs import follow, log_path, server_info, tail
    from imaging_core.errors import ImagingError
    path = log_path(Path(a.run))
    if not path.is_file():
        raise ImagingError(path, "missing: the run log recorded in server.json is not there")
    text, size = tail(path, a.lines)
    if text:
        print(text, flush=True)
    if not a.follow:
        return X.OK
    code = follow(path, size, server_info(Path(a.run)), a.timeout, sys.stdout)
    if code == X.NOT_RUNNING:
        print(f"fedvox runs log: {a.run}: no server is running this run; nothing to follow", file=sys.stderr)
    return code


def _cmd_stop(a) -> int:
    from .runs import stop
    res = stop(Path(a.run), a.timeout)
    print(res.message, file=sys.stderr if res.code else sys.stdout)
    return res.code


def add_runs_parser(cmd) -> None:
    """Register `fedvox runs` through cli.build_parser's ``cmd`` helper."""
    import argparse
    p = cmd("runs", None, "the coordinator's runs: list | status | log | stop")
    rsub = p.add_subparsers(dest="runs_cmd", required=True, metavar="SUBCOMMAND")

    def rcmd(name, fn, helptext):
        q = rsub.add_parser(name, help=helptext, description=helptext, epilog=X.HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        q.set_defaults(fn=fn)
        return q

    q = rcmd("list", _cmd_list, "run directories with state, rounds and best held-out metric")
    q.add_argument("paths", nargs="*", metavar="DIR", help="run directories or directories of runs (default: .)")
    q.add_argument("--json", action="store_true")
    q = rcmd("status", _cmd_status, "one run: state, each site in the current round, every round")
    q.add_argument("run", metavar="RUN")
    q.add_argument("--json", action="store_true")
    q = rcmd("log", _cmd_log, "the run's log (the ServerApp's output, as `fedvox server` recorded it)")
    q.add_argument("run", metavar="RUN")
    q.add_argument("-n", "--lines", type=int, default=50, help="last N lines (default 50)")
    q.add_argument("-f", "--follow", action="store_true", help="then print what is appended while the run runs")
    q.add_argument("--timeout", type=float, default=3600.0, help="stop following after this many seconds")
    q = rcmd("stop", _cmd_stop, "stop the run's server cleanly (SIGTERM by its recorded pid), kill after --timeout")
    q.add_argument("run", metavar="RUN")
    q.add_argument("--timeout", type=float, default=60.0, help="seconds to wait before killing (default 60)")
