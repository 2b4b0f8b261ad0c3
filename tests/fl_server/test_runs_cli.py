"""Operating runs: per-stage progress from the run record's event log (written
by the real round loop over the fake Grid of test_round_loop), `fedvox runs
list | status | log | stop` on run directories the record writer made, and
`stop` against real processes stopped by the pid in the run's pid file."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fl_common import exit_codes as X, pidfile
from fl_common.supervise import GROUP_ENV, pid_alive
from fl_server.cli import main
from fl_server.progress import Follower, line_printer
from fl_server.records import RunRecord
from fl_server.runs import write_pid_file
from tests.fl_server.test_round_loop import FakeGrid, make_loop, make_sites, server_identity  # noqa: F401

REPO = Path(__file__).resolve().parents[2]


def _run(run_dir: Path, fail_round2: bool = True) -> None:
    """A real 2-round run (round loop + record writer); site-c's round-2 training fails."""
    sites = make_sites()
    if fail_round2:
        sites[12].fail[("train", 2)] = "error"
    make_loop(run_dir, FakeGrid(sites)).run()


def test_progress_prints_one_plain_line_per_stage_while_the_loop_runs(tmp_path):
    out = io.StringIO()  # not a terminal: plain, timestamped lines
    with Follower(tmp_path / "run", line_printer(out), poll=0.05):
        _run(tmp_path / "run")
    lines = out.getvalue().splitlines()
    text = "\n".join(lines)
    assert all(" fedvox: " in x for x in lines)
    assert "3 sites connected; 2 rounds" in lines[0]
    assert "round 1/2: training at 3 sites" in text
    assert "round 1: train done in" in text and "3 ok (site-a, site-b, site-c)" in text
    assert "round 1: evaluate done in" in text
    assert "round 2: train done" in text and "2 ok (site-a, site-b), 1 failed (site-c: site-c ClientApp raised" in text
    rows = [x for x in lines if "round 2/2 ok" in x]
    assert rows and "2 sites aggregated, 1 failed" in rows[0]
    # the held-out score comes when the coordinator's evaluation beside the next stage is done
    score = RunRecord.open(tmp_path / "run").round_row(2)["central/dice_fg_mean"]
    assert f"round 2: held-out dice_fg_mean {score:.4f}" in text
    assert "run completed: best held-out dice_fg_mean" in lines[-1]
    # one line per event, in order: connect, 2 x (start, train, evaluate, done), the held-out
    # evaluations of rounds 0-2, the final cross-site stage(s) (the fake sites have no
    # cross-site handler: reported failed), end
    cross = [x for x in lines if "cross-site" in x]
    assert cross and all("failed" in x for x in cross)
    held = [x for x in lines if ": held-out dice_fg_mean" in x and "round " in x]
    assert len(held) == 3
    assert len(lines) == 1 + 2 * 4 + len(held) + len(cross) + 1


def _main(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(map(str, argv)))
    out, err = capsys.readouterr()
    return rc, out, err


def test_runs_list_and_status_name_state_rounds_best_and_each_site_of_the_round(tmp_path, capsys):
    done = tmp_path / "runs" / "done"
    _run(done)
    died = tmp_path / "runs" / "died"  # run.json says running, but no server runs it
    rec = RunRecord(died)
    rec.start({"run_id": "d", "rounds": 5})
    rec.add_round({"round": 1, "status": "ok", "central/dice_fg_mean": 0.25},
                  [{"round": 1, "site": s} for s in ("a", "b", "c")])
    rec.commit_round(1)
    rec.event("round_start", round=2, rounds=5, sites=3)
    rec.event("stage_done", round=2, stage="train", ok=["a"], failed=[{"site": "b", "error": "late"}], seconds=1)
    live = tmp_path / "runs" / "live"
    RunRecord(live).start({"run_id": "l", "rounds": 3})
    write_pid_file(live, tmp_path / "live.log", "tag-x")  # this test process plays the server

    rc, out, _ = _main(capsys, "runs", "list", tmp_path / "runs", "--json")
    rows = {Path(r["run"]).name: r for r in json.loads(out)}
    assert rc == X.OK and set(rows) == {"done", "died", "live"}
    assert rows["done"]["state"] == "completed" and (rows["done"]["rounds_done"], rows["done"]["rounds"]) == (2, 2)
    assert (rows["done"]["best_round"], rows["done"]["best"]) == RunRecord.open(done).best()
    assert rows["died"]["state"] == "interrupted" and rows["died"]["rounds_done"] == 1
    assert rows["live"]["state"] == "running" and rows["live"]["server_pid"] == os.getpid()
    rc, out, _ = _main(capsys, "runs", "list", tmp_path / "runs")
    assert rc == X.OK and out.splitlines()[0].split()[:3] == ["RUN", "STATE", "ROUNDS"]
    assert any("interrupted" in x and "1/5" in x and "dice_fg_mean 0.2500 (round 1)" in x for x in out.splitlines())

    rc, out, _ = _main(capsys, "runs", "status", done, "--json")
    s = json.loads(out)
    cur = s["current_round"]
    assert rc == X.OK and cur["round"] == 2 and cur["status"] == "ok"
    stages = {k: v for k, v in cur["sites"]["site-a"].items() if not k.startswith("cross-site")}
    assert stages == {"train": "ok", "evaluate": "ok"}
    assert cur["sites"]["site-c"]["train"].startswith("failed: site-c ClientApp raised")
    assert [x["round"] for x in s["rounds_table"]] == [0, 1, 2] and s["rounds_table"][2]["failures"] == 1
    rc, out, _ = _main(capsys, "runs", "status", died)
    assert rc == X.OK and "interrupted" in out.splitlines()[0]
    assert "round 2: in progress" in out and "failed: late" in out and "evaluate pending" in out
    assert any(x.split()[:3] == ["c", "train", "pending"] for x in out.splitlines())  # not replied yet
    rc, _, err = _main(capsys, "runs", "status", tmp_path)
    assert rc == X.USAGE and "not a run directory" in err


# A stand-in for `fedvox server`: the same ServerSession + ProcessGroup as cli._cmd_server,
# with one helper process in the group instead of the SuperLink, and a record saying "running".
SERVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from fl_common.supervise import ProcessGroup
    from fl_server.records import RunRecord
    from fl_server.runs import ServerSession
    run_dir = Path(sys.argv[1])
    RunRecord(run_dir).start({"run_id": "s", "rounds": 3})
    group = ProcessGroup("fedvox-server")
    with ServerSession(run_dir, run_dir.parent / "run.log", group.tag, progress=False) as session, group:
        group.start("helper", [sys.executable, "-c", "import time; time.sleep(120)"], run_dir.parent / "helper.log")
        print("ready", flush=True)
        time.sleep(120)
    sys.exit(130 if session.interrupted else 0)
""")


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_runs_stop_stops_the_server_by_its_pid_file_and_the_record_says_stopped(tmp_path, capsys):
    run_dir = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-c", SERVER, str(run_dir)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert p.stdout.readline().strip() == "ready"
        info = pidfile.read(run_dir / "server.json")
        assert info["pid"] == p.pid and info["log"] == str(tmp_path / "run.log")
        assert tmp_path.stat().st_mode & 0o777 == 0o750  # the server work dir (its logs)
        rc, out, _ = _main(capsys, "runs", "stop", run_dir, "--timeout", 20)
        assert rc == X.OK and f"server pid {p.pid} stopped cleanly" in out
        assert p.wait(timeout=10) == X.INTERRUPTED
        from fl_common.supervise import tagged_pids
        assert not tagged_pids(GROUP_ENV, info["group"])  # the helper went with it
        run = json.loads((run_dir / "run.json").read_text())
        assert run["status"] == "stopped" and "SIGTERM" in run["reason"]
        rc, _, err = _main(capsys, "runs", "stop", run_dir)
        assert rc == X.NOT_RUNNING and "no server is running this run (state: stopped)" in err
    finally:
        if p.poll() is None:
            p.kill()


def test_runs_stop_kills_a_server_that_ignores_sigterm_and_its_tagged_helpers(tmp_path, capsys):
    run_dir = tmp_path / "run"
    tag = "fedvox-server-test-" + str(os.getpid())
    deaf = textwrap.dedent("""
        import signal, sys, time
        from pathlib import Path
        from fl_server.records import RunRecord
        from fl_server.runs import write_pid_file
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        RunRecord(Path(sys.argv[1])).start({"run_id": "x", "rounds": 2})
        write_pid_file(Path(sys.argv[1]), None, sys.argv[2])
        print("ready", flush=True)
        time.sleep(120)
    """)
    env = {**_env(), GROUP_ENV: tag}  # as ProcessGroup tags what it starts
    helper = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                               "signal.SIG_IGN); time.sleep(120)"], env=env, start_new_session=True)
    p = subprocess.Popen([sys.executable, "-c", deaf, str(run_dir), tag], stdout=subprocess.PIPE, text=True,
                         env=_env())
    try:
        assert p.stdout.readline().strip() == "ready"
        rc, out, _ = _main(capsys, "runs", "stop", run_dir, "--timeout", 1)
        assert rc == X.OK and "did not stop within 1 s: killed" in out and "1 leftover helper" in out
        assert p.wait(timeout=10) == -signal.SIGKILL
        helper.wait(timeout=10)
        assert not pid_alive(helper.pid)
        assert json.loads((run_dir / "run.json").read_text())["status"] == "stopped"
    finally:
        for q in (p, helper):
            if q.poll() is None:
                q.kill()


def test_runs_log_tails_and_follows_the_recorded_log_with_a_bounded_wait(tmp_path, capsys):
    run_dir = tmp_path / "run"
    RunRecord(run_dir).start({"run_id": "l", "rounds": 1})
    log = tmp_path / "run.log"
    log.write_text("".join(f"line {i}\n" for i in range(10)) + "\x1b[92mcoloured\x1b[0m\n")
    write_pid_file(run_dir, log, None)  # the server is this (live) test process
    rc, out, _ = _main(capsys, "runs", "log", run_dir, "-n", 2)
    assert rc == X.OK and out.splitlines() == ["line 9", "coloured"]

    def append():
        time.sleep(0.5)
        with open(log, "a") as f:
            f.write("appended\n")
    th = threading.Thread(target=append)
    th.start()
    t0 = time.monotonic()
    rc, out, _ = _main(capsys, "runs", "log", run_dir, "-n", 0, "--follow", "--timeout", 1.5)
    th.join()
    assert rc == X.OK and out == "appended\n" and 1.4 < time.monotonic() - t0 < 5
    # a run no server runs: the tail, then "not running"
    pidfile.write(run_dir / "server.json", log=str(log))
    info = json.loads((run_dir / "server.json").read_text())
    info["start_ticks"] = -1  # the pid is ours, but not the process that wrote it
    (run_dir / "server.json").write_text(json.dumps(info))
    rc, out, err = _main(capsys, "runs", "log", run_dir, "-n", 1, "-f")
    assert rc == X.NOT_RUNNING and out.strip() == "appended" and "nothing to follow" in err
    (run_dir / "server.json").unlink()
    rc, _, err = _main(capsys, "runs", "log", run_dir)
    assert rc == X.USAGE and "server.json: missing" in err


def test_run_directories_are_0750_and_logs_pid_files_and_events_0640(tmp_path):
    from fl_common.supervise import ProcessGroup, open_log
    old = os.umask(0o022)  # a permissive umask: the modes must not depend on it
    try:
        rec = RunRecord(tmp_path / "run")
        rec.event("round_start", round=1)
        write_pid_file(tmp_path / "run", None, None)
        with ProcessGroup("perm-test") as g:
            g.start("true", ["true"], tmp_path / "logs" / "true.log").wait(10)
        wide = tmp_path / "wide.log"
        wide.write_text("old\n")
        os.chmod(wide, 0o644)
        open_log(wide).close()
    finally:
        os.umask(old)
    mode = lambda p: p.stat().st_mode & 0o777  # noqa: E731
    assert mode(tmp_path / "run") == 0o750
    assert mode(tmp_path / "run" / "events.jsonl") == 0o640
    assert mode(tmp_path / "run" / "server.json") == 0o640
    assert mode(tmp_path / "logs" / "true.log") == 0o640
    assert mode(wide) == 0o640 and wide.read_text() == "old\n"


def test_the_readme_exit_status_table_is_the_one_in_fl_common_exit_codes():
    text = (REPO / "README.md").read_text()
    for code, _ in X.TABLE:
        assert f"| {code} |" in text, f"README has no row for exit status {code}"
    assert sorted({c for c, _ in X.TABLE}) == [0, 1, 2, 3, 4, 130]


def test_on_a_terminal_progress_prints_the_same_lines_through_rich_under_a_spinner(tmp_path):
    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    from fl_server.progress import Progress
    with Progress(tmp_path / "run", out=out) as prog:
        prog.follower.poll = 0.05
        _run(tmp_path / "run", fail_round2=False)
    assert prog.tty and prog.console.is_terminal
    text = out.getvalue()
    assert "3 sites connected; 2 rounds" in text and "run completed: best held-out dice_fg_mean" in text
    assert " fedvox: " not in text  # the plain (log) form is not used on a terminal


def test_the_run_spec_holds_absolute_paths_so_relative_server_flags_work(tmp_path, monkeypatch):
    """`fedvox server --run-dir runs/r1 --data-base sites` (README's spelling): the
    ServerApp runs in another directory, so the spec it reads must not be relative."""
    from fl_server.deploy import write_spec
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prov").mkdir()
    spec_path = write_spec(Path("runs/r1"), Path("fed.toml"), Path("sites"), True, Path("prov/roster.json"))
    spec = json.loads(spec_path.read_text())
    assert spec_path.is_absolute() and spec_path == tmp_path / "runs" / "r1" / "spec.json"
    assert spec["run_dir"] == str(tmp_path / "runs" / "r1") and spec["data_base"] == str(tmp_path / "sites")
    assert spec["federation"] == str(tmp_path / "fed.toml") and spec["roster"] == str(tmp_path / "prov" / "roster.json")
