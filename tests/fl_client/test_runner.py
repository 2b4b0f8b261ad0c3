"""The site runs only the ClientApp it installed (fl_client.fab_check,
fl_client.runner, fl_client.supernode with runner=True).

Unit part: FABs built by flwr's own builder from real app directories; the
shipped app passes, and each way of changing it is refused with a message
naming the change. Process part: a real SuperLink (TLS, node auth) and three
sites started by fl_client.site.start_site (worker + SuperNode + runner); a
coordinator ships a FAB carrying a shadow fl_client/client_app.py that writes
a marker file at import: every site refuses it before import (no marker, every
reply an error naming the refusal), and then the honest app completes a round
through the same runner processes (one PID per site throughout).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import time
import tomllib
from pathlib import Path

import pytest

from fl_client.site import start_site
from fl_common.config import example_federation_path
from fl_common.kit import read_kit
from fl_common.supervise import ProcessGroup, pid_alive
from fl_server import deploy
from fl_server.flwr_cli import flwr_run
from fl_server.demo import enroll_and_provision

SITES = ["hospital_a", "hospital_b", "hospital_c"]
SHIPPED = Path(deploy.APP_DIR)


def _fab(app_dir: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk
    return build_fab_from_disk(app_dir)


def _app_copy(tmp_path: Path, edit=None, files: dict | None = None) -> Path:
    d = tmp_path / "app"
    shutil.copytree(SHIPPED, d)
    if edit:
        p = d / "pyproject.toml"
        p.write_text(edit(p.read_text()))
    for rel, text in (files or {}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def test_the_pinned_expectation_matches_the_shipped_app():
    from fl_client import fab_check as F
    doc = tomllib.loads((SHIPPED / "pyproject.toml").read_text())
    app = doc["tool"]["flwr"]["app"]
    assert app["components"] == F.EXPECTED_COMPONENTS
    assert set(app["config"]) == F.EXPECTED_CONFIG_KEYS
    assert app["publisher"] == F.EXPECTED_PUBLISHER
    assert sorted(p.name for p in SHIPPED.iterdir()) == ["pyproject.toml"]  # no code in the app
    import hashlib, io, zipfile
    fab = _fab(SHIPPED)
    assert set(zipfile.ZipFile(io.BytesIO(fab)).namelist()) == F.ALLOWED_FILES
    F.check_fab(fab, hashlib.sha256(fab).hexdigest())  # the honest FAB passes


@pytest.mark.parametrize("what, edit, files, says", [
    ("shadow shim", None, {"fl_client/client_app.py": "open('/tmp/x','w')\n", "fl_client/__init__.py": ""},
     "fl_client/client_app.py"),
    ("any .py", None, {"helper.py": "x = 1\n"}, "helper.py"),
    ("a data file", None, {"README.md": "hello\n"}, "README.md"),
    ("other clientapp", lambda t: t.replace("fl_client.client_app:app", "evil:app"), None, "components"),
    ("other serverapp", lambda t: t.replace("fl_server.server_app:app", "evil:app"), None, "components"),
    ("extra config key", lambda t: t.replace('spec = ""', 'spec = ""\nlr = 0.1'), None, "config"),
    ("dependencies", lambda t: t.replace("dependencies = []", 'dependencies = ["evil"]'), None,
     "dependencies"),
    ("other publisher", lambda t: t.replace('publisher = "fedvox"', 'publisher = "x"'), None, "publisher"),
])
def test_a_changed_app_is_refused_naming_the_change(tmp_path, what, edit, files, says):
    from fl_client.fab_check import FabRefused, check_fab
    fab = _fab(_app_copy(tmp_path, edit, files))
    with pytest.raises(FabRefused, match="refused the shipped Flower app") as e:
        check_fab(fab)
    assert says in str(e.value), what


def test_an_abandoned_message_download_fails_its_task_instead_of_blocking_the_runner():
    # Flower's SuperNode leaves a task open when the SuperLink goes away while it downloads the
    # message (RunNotRunning): its objects never arrive. Seen after a server restart: the
    # runner waited in the pull and the resumed run's tasks were never taken.
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError
    from fl_client.runner import _StallGuard

    def never(object_id):
        raise ObjectUnavailableError(object_id)

    asked = []
    guard = _StallGuard(never, lambda: asked.append(1) or len(asked) > 1, stall_s=60, check_s=0.02)
    with pytest.raises(ObjectUnavailableError):
        guard("a")  # too early to ask
    time.sleep(0.05)
    with pytest.raises(ObjectUnavailableError):
        guard("a")  # asked: no other task yet
    time.sleep(0.05)
    with pytest.raises(ObjectPullError, match="abandoned"):
        guard("a")  # the SuperNode offers another task: this download is dead
    slow = _StallGuard(never, lambda: False, stall_s=0.05, check_s=0.01)
    time.sleep(0.08)
    with pytest.raises(ObjectPullError, match="nothing arrived"):
        slow("b")
    arrived = iter([ObjectUnavailableError("c"), b"data"])

    def late(object_id):
        x = next(arrived)
        if isinstance(x, Exception):
            raise x
        return x

    ok = _StallGuard(late, lambda: True, stall_s=60, check_s=60)
    with pytest.raises(ObjectUnavailableError):
        ok("c")
    assert ok("c") == b"data"  # a download still making progress is left alone


def test_bytes_that_do_not_match_their_hash_or_are_no_zip_are_refused():
    from fl_client.fab_check import FabRefused, check_fab
    fab = _fab(SHIPPED)
    with pytest.raises(FabRefused, match="hash"):
        check_fab(fab, "0" * 64)
    with pytest.raises(FabRefused, match="not a zip"):
        check_fab(b"PK not really")


# ---- real processes ------------------------------------------------------------------------

SHADOW_SHIM = """# the coordinator's shadow of the site's installed shim: runs at import
open({marker!r}, "w").write(str(__import__("os").getpid()))
from flwr.app import Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
app = ClientApp()


@app.train()
def train(msg, context):
    return Message(RecordDict({{"m": MetricRecord({{"stolen": 1.0}})}}), reply_to=msg)
"""

ATTACK_SERVER = """import json, time
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    n, out = int(context.run_config["n-nodes"]), context.run_config["out-file"]
    deadline = time.time() + 60
    nodes = list(grid.get_node_ids())
    while len(nodes) < n and time.time() < deadline:
        time.sleep(1)
        nodes = list(grid.get_node_ids())
    msgs = [Message(RecordDict({"c": ConfigRecord({"x": 1})}), dst_node_id=i, message_type="train")
            for i in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=120))
    json.dump([{"error": r.has_error(), "reason": r.error.reason if r.has_error() else None}
               for r in replies], open(out, "w"))
"""


def _attack_app(root: Path, marker: Path) -> Path:
    d = root / "attack_app"
    (d / "fl_client").mkdir(parents=True)
    (d / "fl_client" / "__init__.py").write_text("")
    (d / "fl_client" / "client_app.py").write_text(SHADOW_SHIM.format(marker=str(marker)))
    (d / "attack_server.py").write_text(ATTACK_SERVER)
    (d / "pyproject.toml").write_text("""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
[project]
name = "fedvox-app"
version = "0.1.0"
dependencies = []
[tool.hatch.build.targets.wheel]
packages = ["."]
[tool.flwr.app]
publisher = "fedvox"
[tool.flwr.app.components]
serverapp = "attack_server:app"
clientapp = "fl_client.client_app:app"
[tool.flwr.app.config]
n-nodes = 3
out-file = ""
""")
    return d


def _runner_pid(site) -> int | None:
    # getattr: on a tree without the runner the attack test must fail at its asserts, not here
    keeper = getattr(site.supernode, "keeper", None)
    return keeper.proc.pid if keeper else None


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    """SuperLink + 3 sites (start_site), tiny data, a 1-round federation config."""
    from sites_example.generate import generate
    work = tmp_path_factory.mktemp("runner-fed")
    generate(work / "data", zoom=0.7, cases=0.5, seed=0)
    src = example_federation_path().parent
    shutil.copytree(src / "sites", work / "sites")
    text = (src / "federation.toml").read_text()
    for a, b in (("rounds = 3", "rounds = 1"), ("local_epochs = 2", "local_epochs = 1"),
                 ("channels = [8, 16, 32, 64]", "channels = [4, 8, 16]"), ("strides = [2, 2, 2]", "strides = [2, 2]"),
                 ("patch_size = [32, 32, 32]", "patch_size = [24, 24, 24]"),
                 ("samples_per_case = 4", "samples_per_case = 2")):
        text = text.replace(a, b)
    text = text.replace("[federation]\n", "[federation]\ntrain_timeout = 90.0\neval_timeout = 90.0\n", 1)
    (work / "federation.toml").write_text(text)
    prov, keys = enroll_and_provision(work, SITES, "fedvox-test")
    group = ProcessGroup("test-runner")
    try:
        sl, cli = deploy.start_superlink(group, prov, work / "server", None, False)
        sites = {n: start_site(group, read_kit(prov.site_kits[n]), keys[n], work / "federation.toml",
                               work / "sites" / f"{n}.toml", work / "site" / n, sl.address,
                               data_base=work / "data") for n in SITES}
        yield dict(work=work, prov=prov, cli=cli, sites=sites, marker=work / "SHADOW_RAN",
                   runner_pids={n: _runner_pid(s) for n, s in sites.items()})
    finally:
        group.stop_all(timeout=10)


@pytest.mark.timeout(400)
def test_a_shipped_shadow_shim_is_refused_before_import(federation):
    f = federation
    app = _attack_app(f["work"], f["marker"])
    out = f["work"] / "attack_out.json"
    res = flwr_run(app, f["cli"], f["prov"].federation, {"out-file": str(out)}, stream=True, timeout=240,
                   log_path=f["work"] / "attack_run.log", env={"PYTHONPATH": f"{app}{os.pathsep}"
                                                                 f"{os.environ.get('PYTHONPATH', '')}"})
    assert not f["marker"].exists(), "the shipped fl_client/client_app.py ran at a site"
    assert out.exists(), f"attack ServerApp wrote nothing ({res.status}: {res.details})"
    replies = json.loads(out.read_text())
    assert len(replies) == len(SITES)
    for r in replies:
        assert r["error"] and "refused the shipped Flower app" in r["reason"], r
        assert "fl_client/client_app.py" in r["reason"], r
    for n, s in f["sites"].items():
        assert "refused the shipped Flower app" in s.supernode.keeper.proc.log_text(), n
        assert s.supernode.keeper.proc.pid == f["runner_pids"][n]  # refused, not crashed


@pytest.mark.timeout(400)
def test_the_honest_app_completes_a_round_through_the_same_runners(federation):
    f = federation
    run_dir = f["work"] / "run"
    spec = deploy.write_spec(run_dir, f["work"] / "federation.toml", f["work"] / "data", True,
                             f["prov"].roster_path, connect_timeout=60)
    t0 = time.monotonic()
    res = deploy.run_federation(f["cli"], f["prov"].federation, spec, 300, f["work"] / "server" / "run.log")
    print(f"1-round secure federation through the runner: {time.monotonic() - t0:.1f} s")
    assert res.ok, f"{res.status}: {res.details}"
    rounds = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["sites_aggregated"] == len(SITES)
    assert not f["marker"].exists()
    for n, s in f["sites"].items():
        r = s.supernode.keeper.proc
        assert r.pid == f["runner_pids"][n] and pid_alive(r.pid), f"{n}: the runner was restarted"
        assert r.log_text().count("completed in") >= 4, n  # advertise, share, train, evaluate...


def test_a_crashed_runner_is_restarted_and_stopped_with_its_supernode(federation):
    s = federation["sites"]["hospital_a"]
    keeper, old = s.supernode.keeper, s.supernode.keeper.proc
    os.kill(old.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while keeper.proc is old and time.monotonic() < deadline:
        time.sleep(0.2)
    assert keeper.proc is not old, "the runner was not restarted"
    keeper.wait_ready(60)
    assert keeper.restarts == 1 and "restart 1" in keeper.proc.log_text()
    s.supernode.stop(timeout=10)  # the runner follows its SuperNode and is not restarted again
    assert keeper.proc.wait(30) is not None
    time.sleep(2 * keeper.check_s + 0.5)
    assert not keeper.watching() and not keeper.proc.alive() and keeper.restarts == 1
