"""deploy/: the systemd units and the compose file parse, are hardened, restart
by fedvox's exit codes, and start fedvox with options its CLI accepts (the
CLI's own argparse parses every ExecStart / command line)."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fl_common import exit_codes as X
from fl_common import loopback_guard
from fl_server.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
FEDVOX = "/opt/fedvox/venv/bin/fedvox"  # where deploy/README.md installs it
PYTHON = "/opt/fedvox/venv/bin/python"


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's unit syntax: [Section], Key=value (repeatable), # / ; comments."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"{path.name}:{n}: no continuation lines, please"
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None and "=" in line, f"{path.name}:{n}: not Key=value in a section: {raw!r}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def _cli_accepts(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)  # SystemExit (fails the test) on an unknown option
    assert callable(args.fn)


def test_there_is_a_unit_for_the_coordinator_and_one_for_a_site():
    assert [u.name for u in UNITS] == ["fedvox-server.service", "fedvox-site.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_a_unit_is_hardened_restarts_by_exit_code_and_its_execstart_is_a_valid_fedvox_command(unit):
    svc = parse_unit(unit)["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["User"] == "fedvox" and one["Group"] == "fedvox"  # a dedicated user, never root
    for key, want in {"ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
                      "ProtectHome": "yes", "UMask": "0027", "CapabilityBoundingSet": "",
                      "Restart": "on-failure"}.items():
        assert one.get(key) == want, f"{unit.name}: {key}={one.get(key)!r}, want {want!r}"
    assert one["ReadWritePaths"].split() == ["/var/lib/fedvox"]  # the only writable place
    # restarted on a failure (resume / rejoin), not on bad input nor on a stop on purpose
    prevent = {int(c) for c in one["RestartPreventExitStatus"].split()}
    assert prevent == {X.USAGE, X.INTERRUPTED} and X.FAILED not in prevent
    assert str(X.INTERRUPTED) in one["SuccessExitStatus"].split()
    (exec_start,) = svc["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[0] == FEDVOX
    _cli_accepts(argv[1:])
    work = argv[argv.index("--work") + 1]
    assert work.startswith("/var/lib/fedvox/")  # logs and state inside the writable path
    if "server" in argv[1:2]:
        run_dir = argv[argv.index("--run-dir") + 1]
        assert run_dir.startswith("/var/lib/fedvox/")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verifies_the_unit_and_rates_its_exposure_ok(unit, tmp_path):
    # verify needs ExecStart's program to exist: point it at this checkout's fedvox
    exe = Path(sys.executable).with_name("fedvox")
    if not exe.is_file():
        pytest.skip(f"{exe} not installed (pip install -e .)")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(FEDVOX, str(exe)).replace(PYTHON, sys.executable))
    v = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert v.returncode == 0, v.stderr
    assert not any(w in v.stderr for w in ("Unknown key", "Unknown section", "Failed to parse", "Invalid")), v.stderr
    s = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(copy)], capture_output=True,
                       text=True, timeout=60)
    line = [x for x in (s.stdout + s.stderr).splitlines() if "Overall exposure level" in x]
    assert line, s.stdout + s.stderr
    level = float(line[0].split(":")[-1].split()[0])
    assert level <= 2.0, line[0]  # systemd's scale: < 2 "OK", 10 "UNSAFE"


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_a_unit_guards_its_loopback_ports_with_net_admin_only(unit):
    """ExecStartPre installs fl_common.loopback_guard for the unit's own cgroup and user,
    ExecStopPost removes it; both as root ('+': nft needs AF_NETLINK, which the sandbox
    refuses) with CAP_NET_ADMIN as the only capability left."""
    svc = parse_unit(unit)["Service"]
    user = svc["User"][-1]
    for key, action in (("ExecStartPre", "install"), ("ExecStopPost", "remove")):
        (line,) = svc[key]
        assert line.startswith("+"), f"{unit.name}: {key} must run privileged ('+'), got {line!r}"
        argv = shlex.split(line[1:])
        assert argv[:2] == ["/usr/bin/setpriv", "--bounding-set=-all,+net_admin"], argv
        assert argv[2:5] == [PYTHON, "-m", "fl_common.loopback_guard"], argv
        a = loopback_guard.build_parser().parse_args(argv[5:])
        assert a.action == action and a.cgroup is None and a.table is None  # the unit's own cgroup
        if action == "install":
            assert a.user == user
    # the service itself keeps no capability and cannot touch netlink
    assert svc["CapabilityBoundingSet"] == [""] and "AF_NETLINK" not in svc["RestrictAddressFamilies"][-1]


def test_the_compose_file_runs_valid_fedvox_commands_hardened():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert set(services) == {"server", "site"}
    for name, svc in services.items():
        assert svc["profiles"] == [name]
        _cli_accepts(svc["command"])
        assert svc["command"][0] == name
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"]
        assert "no-new-privileges:true" in svc["security_opt"] and svc["user"] != "root"
        assert svc["restart"].startswith("on-failure")
        writable = [v for v in svc["volumes"] if not v.endswith(":ro")]
        assert writable == ["fedvox-state:/var/lib/fedvox"]
    assert "ports" not in services["site"]  # a site publishes nothing
    assert services["server"]["ports"] == ["8000:8000"]
    assert (DEPLOY / "Dockerfile").is_file()
