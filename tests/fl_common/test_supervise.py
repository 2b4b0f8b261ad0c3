"""Process supervision with real processes: a group stops detached helpers and
stubborn processes, a launcher interrupted by Ctrl-C or SIGTERM leaves nothing
behind, markers nest, and every wait is bounded and names the log."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_common import supervise as S

pytestmark = [pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")]


HELPER = r"""
import os, signal, subprocess, sys, time
# A grandchild in its own session (as SuperLink starts SuperExec): it escapes the group.
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open(sys.argv[1], "w").write(str(g.pid))
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["polite", "stubborn"])
def test_group_stops_detached_helpers_and_stubborn_processes(tmp_path, mode):
    pidfile = tmp_path / "grandchild.pid"
    with S.ProcessGroup("t") as g:
        p = g.start("helper", [sys.executable, "-c", HELPER, pidfile, mode], tmp_path / "h.log")
        p.wait_for_log("ready", timeout=15)
        gc = int(pidfile.read_text())
        assert S.pid_alive(gc) and os.getsid(gc) != os.getsid(p.pid)
        assert g.leftovers() >= {p.pid, gc}
        t0 = time.monotonic()
        g.stop_all(timeout=1.0)
        took = time.monotonic() - t0
    assert not p.alive() and not S.pid_alive(gc)
    assert g.leftovers() == set()
    if mode == "stubborn":  # SIGTERM ignored: SIGKILL once the 1 s grace is over
        assert 0.9 < took < 6.0
    else:
        assert took < 3.0


DRIVER = r"""
import sys, time
from fl_common import supervise as S
with S.ProcessGroup("driver") as g:
    p = g.start("helper", [sys.executable, "-c", sys.argv[1], sys.argv[2], "polite"], sys.argv[3])
    p.wait_for_log("ready", timeout=15)
    print(g.tag, flush=True)
    time.sleep(300)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_to_the_launcher_stops_everything(tmp_path, sig):
    """A program using ProcessGroup, interrupted, leaves nothing behind."""
    with open(tmp_path / "driver.err", "w") as err:  # where its KeyboardInterrupt goes
        # SIGINT at its default, as under a terminal: a suite started in the background by a
        # non-interactive shell (`bash .ci/run &`) runs with SIGINT ignored, children inherit
        # that, and Python then installs no KeyboardInterrupt handler
        drv = subprocess.Popen([sys.executable, "-c", DRIVER, HELPER, tmp_path / "gc.pid",
                                tmp_path / "h.log"], stdout=subprocess.PIPE, stderr=err,
                               text=True, cwd=Path(__file__).parents[2],
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        tag = drv.stdout.readline().strip()  # printed once the helper is up
        assert tag.startswith("driver-"), tag
        gc = int((tmp_path / "gc.pid").read_text())
        assert S.pid_alive(gc) and S.tagged_pids(S.GROUP_ENV, tag)
        drv.send_signal(sig)
        assert drv.wait(timeout=30) != 0  # stop_all's 10 s grace plus its /proc sweeps
        assert not S.pid_alive(gc) and S.tagged_pids(S.GROUP_ENV, tag) == set()
    finally:
        if drv.poll() is None:
            drv.kill()
            drv.wait(5)


@pytest.mark.timeout(30)
def test_tags_nest_so_an_outer_launcher_still_finds_everything(tmp_path):
    with S.ProcessGroup("inner") as g:
        p = g.start("sleeper", [sys.executable, "-c", "import time; time.sleep(300)"],
                    tmp_path / "s.log", env={**os.environ, S.GROUP_ENV: "outer-tag"})
        deadline = time.monotonic() + 10
        while p.pid not in S.tagged_pids(S.GROUP_ENV, g.tag) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert p.pid in S.tagged_pids(S.GROUP_ENV, "outer-tag") & S.tagged_pids(S.GROUP_ENV, g.tag)
    assert not p.alive()


@pytest.mark.timeout(30)
def test_waits_are_bounded_and_report_the_log(tmp_path):
    with S.ProcessGroup("t") as g:
        p = g.start("printer", [sys.executable, "-c",
                                "import time; print('hello', flush=True); time.sleep(300)"],
                    tmp_path / "p.log")
        assert p.wait_for_log(r"hel+o", timeout=15)
        t0 = time.monotonic()
        with pytest.raises(S.LaunchError, match="not seen within"):
            p.wait_for_log("never", timeout=0.5)
        assert time.monotonic() - t0 < 2
        q = g.start("quitter", [sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
                    tmp_path / "q.log")
        with pytest.raises(S.LaunchError, match="exited with 3") as e:
            q.wait_for_log("never", timeout=30)
        assert "bye" in str(e.value)
    assert not p.alive()
