"""Flower's deployment engine for real on loopback (fl_server.superlink,
fl_server.flwr_cli, fl_client.supernode): SuperLink with TLS and node
authentication, two SuperNodes running a numpy-only app for two rounds, a
refused key the coordinator made itself, and nothing left running afterwards.

Every wait has a deadline; the module-scoped federation is stopped in its
fixture even when a test fails. The whole file takes 40-75 s on a shared
2-core machine (most of it the two rounds: SuperNode and Grid poll every 3 s).
"""
from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time
from pathlib import Path

import pytest

from fl_client.supernode import start_supernode
from fl_common.supervise import PROC_ENV, LaunchError, ProcessGroup, port_open, tagged_pids
from fl_server.flwr_cli import flwr_run, list_nodes, register_sites, write_cli_config
from fl_common.crypto import pki
from fl_server.demo import enroll_and_provision
from fl_server.superlink import start_superlink

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")]
TINY_APP = Path(__file__).parent / "tiny_app"
FED = "fedvox"


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    """Two sites make their keys (site init), provision from their requests, run
    SuperLink (TLS + node auth) and register the roster."""
    work = tmp_path_factory.mktemp("fed")
    prov, keys = enroll_and_provision(work, ["hospital_a", "hospital_b"], FED)
    group = ProcessGroup("test-deployment")
    timings = {}
    try:
        t0 = time.monotonic()
        sl = start_superlink(work / "server", tls=(prov.ca_cert, prov.server_cert, prov.server_key),
                               auth=True, group=group, ready_timeout=60)
        timings["superlink_ready_s"] = time.monotonic() - t0
        cli_home = work / "cli"
        write_cli_config(cli_home, FED, sl.address, prov.ca_cert)
        t0 = time.monotonic()
        ids = register_sites(cli_home, FED, {s: prov.roster[s] for s in ("hospital_a", "hospital_b")})
        timings["register_2_s"] = time.monotonic() - t0
        assert all(isinstance(v, int) for v in ids.values())
        yield dict(work=work, prov=prov, keys=keys, group=group, superlink=sl, cli=cli_home, timings=timings)
    finally:
        group.stop_all(timeout=10)
        print("timings:", json.dumps({k: round(v, 2) for k, v in timings.items()}))


def test_superlink_serves_tls_with_the_provisioned_certificate(fed):
    host, port = fed["superlink"].address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(fed["prov"].ca_cert))
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as s:
            der = s.getpeercert(binary_form=True)
    assert ssl.DER_cert_to_PEM_cert(der).strip() == fed["prov"].server_cert.read_text().strip()


def test_registering_again_is_harmless(fed):
    again = register_sites(fed["cli"], FED, {"hospital_a": fed["prov"].roster["hospital_a"]})
    assert again == {"hospital_a": None}


def test_two_sites_run_two_rounds_with_tls_and_auth(fed):
    prov, g, sl = fed["prov"], fed["group"], fed["superlink"]
    for s in ("hospital_a", "hospital_b"):
        t0 = time.monotonic()
        kit = prov.site_kits[s]
        start_supernode(s, sl.address, kit / "ca.crt", fed["keys"][s] / "auth.key",
                          {"site": s, "data-root": str(fed["work"] / "data dir" / s)},
                          workdir=fed["work"] / "sites" / s, group=g, wait_connected=60)
        fed["timings"][f"supernode_{s}_connect_s"] = time.monotonic() - t0
    out = fed["work"] / "server_out.json"
    res = flwr_run(TINY_APP, fed["cli"], FED, {"out-file": str(out), "stage-timeout": 45.0},
                     timeout=100)
    fed["timings"]["flwr_run_s"] = res.seconds
    assert res.ok, (res, res.log_path.read_text() if res.log_path else "")
    rec = json.loads(out.read_text())
    assert rec["status"] == "done"
    assert rec["final"] == [2.0] * 10                     # 0 -> +1 -> +1, averaged
    assert [r["sites"] for r in rec["rounds"]] == [["hospital_a", "hospital_b"]] * 2
    for i, r in enumerate(rec["rounds"]):
        fed["timings"][f"round{i + 1}_s"] = r["seconds"]
    # How the deployment engine finds the app's code: the FAB is unpacked under
    # each process's $FLWR_HOME/apps/<publisher>.<name>.<version>.<hash8>/ and that
    # directory is put first on sys.path (no dependency installation).
    app_dir = Path(rec["where"]["sys_path"][0])
    assert app_dir.parent == sl.flwr_home / "apps" and app_dir.name.startswith("fedvox.tiny-app.0.1.0.")
    assert Path(rec["where"]["file"]).parent == app_dir
    client_dirs = {Path(c["sys_path"][0]).parent for r in rec["rounds"] for c in r["client_where"]}
    assert client_dirs == {fed["work"] / "sites" / s / "flwr_home" / "apps"
                           for s in ("hospital_a", "hospital_b")}
    online = [n for n in list_nodes(fed["cli"], FED) if n["status"] == "online"]
    assert len(online) == 2


def test_a_key_the_coordinator_made_for_a_site_is_refused(fed):
    """The coordinator never holds a site's key: to play hospital_b it must make
    one itself, and a SuperNode with that key is not let in (peers' signature
    checks refuse it too: tests/fl_client/test_enroll.py)."""
    prov, g, sl = fed["prov"], fed["group"], fed["superlink"]
    kit = prov.site_kits["hospital_b"]
    forged = fed["work"] / "coordinator-made.key"
    forged.write_bytes(pki.openssh_private(pki.new_key()))
    forged.chmod(0o600)
    t0 = time.monotonic()
    rogue = start_supernode("rogue", sl.address, kit / "ca.crt", forged, {"site": "rogue"},
                              workdir=fed["work"] / "sites" / "rogue", group=g, wait_connected=None)
    rc = rogue.wait(timeout=45)
    fed["timings"]["rogue_refused_s"] = time.monotonic() - t0
    assert rc not in (None, 0), rogue.tail()
    assert "Failed to activate SuperNode" in rogue.log_text()
    assert "SuperNode ID" not in rogue.log_text()
    # Its SuperExec outlives it for a moment; stop() sweeps it by the env marker.
    rogue.stop(5)
    assert tagged_pids(PROC_ENV, rogue.proc_tag) == set()
    # and with wait_connected, refusal is an error, not a hang
    with pytest.raises(LaunchError, match="exited"):
        start_supernode("rogue", sl.address, kit / "ca.crt", forged, {"site": "rogue"},
                          workdir=fed["work"] / "sites" / "rogue", group=g, wait_connected=45)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_everything_is_stopped_even_mid_run(fed):
    g, sl = fed["group"], fed["superlink"]
    procs = list(g.procs)
    assert any(p.name.startswith("supernode:") for p in procs)
    # A run whose ServerApp waits for a third site that never comes: its
    # flwr-serverapp lives under the SuperLink's SuperExec, in another session.
    res = flwr_run(TINY_APP, fed["cli"], FED, {"min-nodes": 3, "wait-nodes-timeout": 300.0},
                     stream=False, timeout=60)
    assert res.status == "submitted"
    deadline = time.monotonic() + 60
    while not any("flwr-serverapp" in _cmdline(x) for x in g.leftovers()):
        assert time.monotonic() < deadline, "the ServerApp never started"
        time.sleep(0.3)
    helpers = {x: _cmdline(x) for x in g.leftovers()}
    serverapp = [x for x, c in helpers.items() if "flwr-serverapp" in c]
    assert serverapp and all(os.getsid(x) != os.getsid(sl.pid) for x in serverapp)
    t0 = time.monotonic()
    g.stop_all(timeout=10)
    fed["timings"]["stop_all_s"] = time.monotonic() - t0
    assert not any(p.alive() for p in procs)
    assert g.leftovers() == set()           # no superexec / serverapp / clientapp left
    assert not port_open("127.0.0.1", sl.port)
    for p in procs:
        if p.port:
            assert not port_open("127.0.0.1", p.port), p.name


# ---- what listens where (`fedvox server` set-up: fl_server.deploy) --------------

def _listeners(pids: set[int]) -> set[tuple[str, int]]:
    """(ip, port) of the listening IPv4 TCP sockets the given processes hold (/proc/net/tcp)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    got = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:
            hexip, hexport = f[1].split(":")
            got.add((".".join(str(int(hexip[i:i + 2], 16)) for i in (6, 4, 2, 0)), int(hexport, 16)))
    return got


def test_server_serves_sites_on_the_provisioned_address_and_port_and_flower_only_on_loopback(tmp_path):
    from fl_common.supervise import free_port
    from fl_server import deploy
    port = free_port("127.0.0.2")
    prov, _ = enroll_and_provision(tmp_path, ["hospital_a"], FED, hosts=["127.0.0.2"], port=port)
    group = ProcessGroup("test-listen")
    try:
        sl, _ = deploy.start_superlink(group, prov, tmp_path / "server", None, False,
                                       listen=deploy.fleet_listen(prov))
        assert sl.fleet_address == f"127.0.0.2:{port}"  # what the kit says
        flower = _listeners({sl.pid} | {p.pid for p in group.procs if p.name == "superlink"})
        assert flower and all(ip == "127.0.0.1" and p != port for ip, p in flower), flower
        assert ("127.0.0.2", port) in _listeners({sl.gate.pid})
        ctx = ssl.create_default_context(cafile=str(prov.ca_cert))
        for path in ("/v1/control/list-runs", "/v1/runtime/pull-messages", "/v1/fleet/../control/list-runs",
                     "/v1/fleet/%2e%2e/control/list-runs"):
            with socket.create_connection(("127.0.0.2", port), 10) as raw, \
                    ctx.wrap_socket(raw, server_hostname="127.0.0.2") as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
                assert s.recv(200).startswith(b"HTTP/1.1 403"), path
        # a site's kit address reaches Flower's Fleet API (uvicorn answers, not the gate)
        with socket.create_connection(("127.0.0.2", port), 10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.2") as s:
            s.sendall(b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            reply = s.recv(300).lower()
            assert b"server: uvicorn" in reply and not reply.startswith(b"http/1.1 403"), reply
    finally:
        group.stop_all(timeout=10)


def test_fleet_gate_refuses_smuggling_and_non_fleet_heads():
    from fl_server.fleet_gate import Refused, parse_head
    ok = b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nConnection: keep-alive"
    line, headers, n = parse_head(ok)
    assert n == 3 and all(k.lower() != b"connection" for k, _ in headers)
    for bad in (b"POST /v1/control/start-run HTTP/1.1\r\nContent-Length: 0",
                b"POST /v1/fleet/x?y=/v1/control HTTP/1.1",
                b"POST /v1/fleet/x HTTP/1.1\r\nTransfer-Encoding: chunked",
                b"POST /v1/fleet/x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 40",
                b"POST /v1/fleet/x HTTP/1.1\r\nContent-Length : 3",
                b"PRI * HTTP/2.0"):
        with pytest.raises(Refused):
            parse_head(bad)
