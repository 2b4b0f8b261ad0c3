"""fl_common.loopback_guard with real processes, in a network namespace and a
cgroup this test creates and removes: a real `flower-superlink` runs inside the
guarded cgroup; a Control API request (what `flwr run` / `flwr stop` / `flwr
ls` send) from another uid (nobody) is reset at TCP connect, while a throwaway
service uid gets Flower's answer and root's `flwr ls` succeeds; a socket of the
cgroup on the namespace's own non-loopback address (as the Fleet gate's) is
guarded too, a listener outside the cgroup stays reachable for everyone;
removing the guard opens the port again. Needs root, nsenter/setpriv, nftables
and cgroup v2 (skips with the reason otherwise). The host's own ruleset is
never touched: nft runs only inside the namespace.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fl_common import loopback_guard as G
from fl_common.flower import BIN_DIR, flower_env
from fl_common.supervise import ProcessGroup, free_port
from fl_server.flwr_cli import write_cli_config
from fl_server.netns import Scratch, namespaces_available

pytestmark = [pytest.mark.timeout(240)]
SERVICE_UID = 47000 + secrets.randbelow(1000)  # no passwd entry needed: setpriv takes numbers
OTHER_UID = 65534  # nobody


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespace, nftables, cgroups)"
    for tool in ("nft", "nsenter", "setpriv"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        G.cgroup2_mount()
    except G.GuardError as e:
        return str(e)
    return namespaces_available()


WHY_NOT = _why_not()
# connect and (given a path) POST an empty request, printing Flower's HTTP status or the refusal
PROBE = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[3] if sys.argv[3:] else "127.0.0.1", int(sys.argv[1])), 5)
    if sys.argv[2] != "-":
        c.sendall(b"POST " + sys.argv[2].encode() + b" HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: 0\\r\\n"
                  b"Connection: close\\r\\n\\r\\n")
        print("http", c.recv(64).split(b" ")[1].decode())
    else:
        print("connected")
except OSError as e:
    print("refused", e.errno)
"""
HOST_IP = "10.231.78.1"  # exists only inside the test's namespace
LISTEN = [sys.executable, "-c", "import socket,sys,time\ns=socket.socket()\n"
          "s.bind((sys.argv[1], int(sys.argv[2])))\ns.listen()\nprint('listening', flush=True)\ntime.sleep(120)\n"]
# other uids cannot run this venv's python when it lives under /root (0700): probes use the system's
OTHER_PY = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(p, os.X_OK)), None)


def _into(cgroup: Path) -> list[str]:
    """argv prefix: move into ``cgroup`` (as a unit's processes are), then exec the rest."""
    return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]


def _as(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


@pytest.fixture()
def guarded():
    if WHY_NOT:
        pytest.skip(f"loopback guard test: {WHY_NOT}")
    tag = secrets.token_hex(3)
    cg_rel = f"fvx-guard-{tag}"
    cg = G.cgroup2_mount() / cg_rel
    cg.mkdir()
    base = Path(tempfile.mkdtemp(prefix="fvx-guard-"))
    group = ProcessGroup("test-guard")
    try:
        with Scratch(tag) as ns:
            yield {"ns": ns, "cg_rel": cg_rel, "cg": cg, "base": base, "group": group}
            group.stop_all(timeout=15)
    finally:
        group.stop_all(timeout=15)
        left = group.leftovers()
        for _ in range(50):  # the cgroup empties once its processes are reaped
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)
    assert not left, f"processes left running: {left}"
    assert not cg.exists(), f"cgroup {cg} left behind"
    assert not Path("/run/netns", f"fvx-{tag}-scratch").exists()


def _flwr_ls(ns: Scratch, address: str, home: Path) -> dict | str:
    """`flwr ls` as root in the namespace (this venv may be unreadable to other uids)."""
    write_cli_config(home, "guarded", address, insecure=True)
    cp = subprocess.run([*ns.enter_prefix(), str(BIN_DIR / "flwr"), "ls", "guarded", "--format", "json"],
                        capture_output=True, text=True, timeout=60, env=flower_env(home))
    i = cp.stdout.find("{")
    return json.JSONDecoder().raw_decode(cp.stdout, i)[0] if i >= 0 else (cp.stdout + cp.stderr)[-800:]


CONTROL = "/v1/control/list-runs"  # what `flwr ls` calls


def _probe(ns: Scratch, uid: int, port: int, http: bool = True, host: str = "127.0.0.1",
           path: str = CONTROL) -> str:
    r = subprocess.run([*ns.enter_prefix(), *_as(uid), OTHER_PY, "-c", PROBE, str(port),
                        path if http else "-", host], capture_output=True, text=True, timeout=30, cwd="/")
    return r.stdout.strip() or r.stderr[-500:]


GUARD_CAPS = ["setpriv", "--bounding-set=-all,+net_admin"]  # as the units' ExecStartPre runs it


def _guard(ns: Scratch, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*ns.enter_prefix(), *GUARD_CAPS, sys.executable, "-m", "fl_common.loopback_guard",
                           *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})


def test_only_root_and_the_service_uid_reach_the_guarded_superlink(guarded):
    if OTHER_PY is None:
        pytest.skip("no system python3 that other uids can run (for the probes)")
    ns, base, group = guarded["ns"], guarded["base"], guarded["group"]
    port, other_port = free_port(), free_port()  # ports are per namespace: nothing else is in this one
    # the guard keys on the LISTENER's cgroup (and the CONNECTING uid), so the SuperLink may run as
    # root here; in the unit it runs as the service user in fedvox-server.service's cgroup
    into_cgroup = _into(guarded["cg"])
    sl = group.start("superlink", [*into_cgroup, *ns.enter_prefix(), BIN_DIR / "flower-superlink", "--insecure",
                                   "--host", "127.0.0.1", "--port", str(port),
                                   "--disable-runtime-dependency-installation"],
                     base / "superlink.log", env=flower_env(base / "sl_home"), cwd=base)
    sl.wait_for_log(r"Uvicorn running on https?://", 90)
    group.start("plain", [*ns.enter_prefix(), *LISTEN, "127.0.0.1", str(other_port)],  # outside the cgroup
                base / "plain.log").wait_for_log("listening", 30)
    # a socket of the unit on this host's own (non-loopback) address, like the Fleet gate's:
    # local traffic to it is routed over lo, so it is guarded too
    for args in (["link", "add", "fvxa", "type", "veth", "peer", "name", "fvxb"], ["link", "set", "fvxb", "up"],
                 ["addr", "add", f"{HOST_IP}/24", "dev", "fvxa"], ["link", "set", "fvxa", "up"]):
        subprocess.run(["ip", "-n", ns.name, *args], check=True, timeout=10)
    group.start("host-addr", [*into_cgroup, *ns.enter_prefix(), *LISTEN, HOST_IP, str(other_port)],
                base / "host-addr.log").wait_for_log("listening", 30)

    # before the guard: any local uid talks to the Control API (the hole this closes)
    before = _probe(ns, OTHER_UID, port)
    assert before.startswith("http "), before

    r = _guard(ns, "install", "--user", str(SERVICE_UID), "--cgroup", guarded["cg_rel"])
    assert r.returncode == 0, r.stderr
    tables = subprocess.run([*ns.enter_prefix(), "nft", "list", "tables"], capture_output=True, text=True,
                            timeout=30).stdout
    assert f"table inet {G.table_name(guarded['cg_rel'])}" in tables
    assert _probe(ns, OTHER_UID, port) == "refused 111"  # reset at connect: no byte reaches Flower
    assert _probe(ns, SERVICE_UID, port) == before  # the same answer as before for the service user
    ls = _flwr_ls(ns, f"127.0.0.1:{port}", base / "root_home")  # the real CLI, as root
    assert isinstance(ls, dict) and ls.get("success") is True, ls
    assert _probe(ns, OTHER_UID, other_port, http=False) == "connected"  # only the service's sockets
    assert _probe(ns, OTHER_UID, other_port, http=False, host=HOST_IP) == "refused 111"
    assert _probe(ns, SERVICE_UID, other_port, http=False, host=HOST_IP) == "connected"

    r = _guard(ns, "remove", "--cgroup", guarded["cg_rel"])
    assert r.returncode == 0, r.stderr
    assert _probe(ns, OTHER_UID, port) == before
    assert "fedvox_guard" not in subprocess.run([*ns.enter_prefix(), "nft", "list", "tables"],
                                                capture_output=True, text=True, timeout=30).stdout


def test_a_sites_supernode_runtime_api_is_guarded_and_guards_must_share_one_user(guarded):
    if OTHER_PY is None:
        pytest.skip("no system python3 that other uids can run (for the probes)")
    ns, base, group = guarded["ns"], guarded["base"], guarded["group"]
    link_port, runtime_port = free_port(), free_port()
    group.start("superlink", [*ns.enter_prefix(), BIN_DIR / "flower-superlink", "--insecure", "--host",
                              "127.0.0.1", "--port", str(link_port), "--disable-runtime-dependency-installation"],
                base / "superlink.log", env=flower_env(base / "sl_home"),
                cwd=base).wait_for_log(r"Uvicorn running on https?://", 90)
    # the site unit's SuperNode, in the guarded cgroup, its Runtime API on loopback
    sn = group.start("supernode", [*_into(guarded["cg"]), *ns.enter_prefix(), BIN_DIR / "flower-supernode",
                                   "--insecure", "--superlink", f"127.0.0.1:{link_port}", "--port",
                                   str(runtime_port)], base / "supernode.log", env=flower_env(base / "sn_home"),
                     cwd=base)
    deadline = time.monotonic() + 90
    while not _probe(ns, 0, runtime_port, http=False).startswith("connected"):
        assert time.monotonic() < deadline and sn.popen.poll() is None, sn.tail(40)
        time.sleep(0.5)
    acquire = "/v1/runtime/acquire-task"  # the SuperExec-secret route; the rest want a task token
    before = _probe(ns, OTHER_UID, runtime_port, path=acquire)
    assert before.startswith("http "), before

    r = _guard(ns, "install", "--user", str(SERVICE_UID), "--cgroup", guarded["cg_rel"])
    assert r.returncode == 0, r.stderr
    assert _probe(ns, OTHER_UID, runtime_port, path=acquire) == "refused 111"
    assert _probe(ns, OTHER_UID, runtime_port, path="/health") == "refused 111"
    assert _probe(ns, SERVICE_UID, runtime_port, path=acquire) == before
    assert _probe(ns, OTHER_UID, link_port).startswith("http ")  # the SuperLink is not in this cgroup

    # a second guard for another user would refuse this one's user (one shared mark bit): refused
    r = _guard(ns, "install", "--user", str(SERVICE_UID + 1), "--cgroup", guarded["cg_rel"],
               "--table", "fedvox_guard_second")
    assert r.returncode == 1 and "must share one User=" in r.stderr, r.stderr
    assert _guard(ns, "remove", "--cgroup", guarded["cg_rel"]).returncode == 0


def test_bad_input_is_one_clear_error():
    with pytest.raises(G.GuardError, match="root cgroup"):
        G.ruleset("t", 1000, "/")
    with pytest.raises(G.GuardError, match="no such user"):
        G.resolve_uid("no-such-user-fedvox-test")
    text = G.ruleset("fedvox_guard_x", 991, "system.slice/fedvox-server.service")
    assert "meta skuid != { 0, 991 }" in text and 'level 2 "system.slice/fedvox-server.service"' in text
    assert G.table_name("system.slice/fedvox-server.service") == "fedvox_guard_fedvox_server_service"
    with pytest.raises(G.GuardError, match="does not exist|no cgroup2"):
        G.install(991, f"fvx-no-such-cgroup-{secrets.token_hex(3)}")


def test_nft_is_given_the_cgroup_path_under_sys_fs_cgroup_on_pure_and_hybrid_hosts():
    cg = "system.slice/fedvox-site.service"
    assert G.nft_cgroup_path(cg, Path("/sys/fs/cgroup")) == cg
    assert G.nft_cgroup_path(cg, Path("/sys/fs/cgroup/unified")) == f"unified/{cg}"
    with pytest.raises(G.GuardError, match="outside /sys/fs/cgroup"):
        G.nft_cgroup_path(cg, Path("/mnt/cg2"))
    # the level counts from the cgroup2 root, whatever prefix nft needs
    assert 'level 2 "unified/system.slice/fedvox-site.service"' in G.ruleset("t", 5, cg, f"unified/{cg}")
