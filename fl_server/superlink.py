"""Start the coordinator's `flower-superlink`: TLS with the provisioned
certificate, SuperNode authentication, its state database. Flower 1.41 serves
the Control, Fleet and Runtime (ServerAppIo) APIs on ONE port, so the
SuperLink itself always binds 127.0.0.1 and, when sites elsewhere must reach
it, fl_server.fleet_gate serves the Fleet API alone on the public addresses.
Other local users are kept off that loopback port (which has no
authentication) by fl_common.loopback_guard, which the systemd unit installs.
Flower's quirks: fl_common.flower."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from fl_common.flower import BIN_DIR, flower_env
from fl_common.supervise import LaunchError, Proc, ProcessGroup, default_group, free_port

from .fleet_gate import GATE_READY

SUPERLINK_READY = r"Uvicorn running on https?://"  # its readiness log line (Flower 1.41)
LOOPBACK_HOST = "127.0.0.1"  # where the SuperLink (all three APIs) binds


def _tls_paths(tls) -> tuple[Path, Path, Path] | None:
    if tls is None:
        return None
    ca, cert, key = (Path(p).absolute() for p in tls)
    for p in (ca, cert, key):
        if not p.is_file():
            raise LaunchError(f"TLS file not found: {p}")
    return ca, cert, key


def start_superlink(workdir, port: int | None = None, tls=None, auth: bool = False,
                    log_path=None, *, fleet_listen: Iterable[tuple[str, int]] = (), database: str | None = "state.db",
                    group: ProcessGroup | None = None, ready_timeout: float = 90.0,
                    extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None) -> Proc:
    """Start `flower-superlink` and wait until its HTTPS port serves.

    ``tls``: (ca.crt, server.pem, server.key) or None for --insecure (local
    development only). ``auth``: SuperNode authentication (needs TLS).
    ``port``: the SuperLink's loopback port (None: a free one).
    ``fleet_listen``: (host, port) pairs where fl_server.fleet_gate serves the
    Fleet API alone (needs TLS); the Control and ServerAppIo APIs stay on
    loopback. ``database``: file name in ``workdir``
    (None: in memory) so a restarted SuperLink keeps runs and registered nodes.
    ``env``: extra environment for it and the ServerApps it starts.
    The returned Proc has ``address`` ("127.0.0.1:PORT": Control API, for the
    `flwr` CLI), ``fleet_address`` (where sites connect: the first gate
    address, else ``address``), ``gate`` (the gate's Proc or None), ``port``
    and ``flwr_home``.
    """
    fleet_listen = [(str(h), int(p)) for h, p in fleet_listen]
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    tls_p = _tls_paths(tls)
    if auth and tls_p is None:
        raise LaunchError("SuperNode authentication needs TLS (Flower refuses --insecure with it)")
    if fleet_listen and tls_p is None:
        raise LaunchError("serving sites beyond loopback needs TLS (the Fleet gate terminates it)")
    log_path = Path(log_path) if log_path else workdir / "superlink.log"
    flwr_home = workdir / "flwr_home"
    flwr_home.mkdir(exist_ok=True)
    group = group or default_group()
    pick = port is None
    host = LOOPBACK_HOST

    for attempt in range(3 if pick else 1):
        p = free_port(host) if pick else int(port)
        argv = [BIN_DIR / "flower-superlink", "--host", host, "--port", str(p),
                "--disable-runtime-dependency-installation"]
        if tls_p is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", tls_p[0], "--ssl-certfile", tls_p[1],
                     "--ssl-keyfile", tls_p[2]]
        if auth:
            argv.append("--enable-supernode-auth")
        if database:
            argv += ["--database", workdir / database]
        argv += list(extra_args)
        proc = group.start("superlink", argv, log_path, env=flower_env(flwr_home, env), cwd=workdir)
        try:
            proc.wait_for_log(SUPERLINK_READY, ready_timeout)
        except LaunchError:
            in_use = "address already in use" in proc.log_text()[proc.log_start:].lower()
            proc.stop(5.0)
            if pick and in_use and attempt < 2:
                continue  # someone took the port between our probe and bind
            raise
        proc.address = f"{host}:{p}"
        proc.port, proc.flwr_home, proc.workdir = p, flwr_home, workdir
        proc.gate, proc.fleet_address = None, proc.address
        if fleet_listen:
            proc.gate = start_fleet_gate(group, fleet_listen, proc.address, tls_p, workdir / "fleet-gate.log",
                                         ready_timeout)
            proc.fleet_address = proc.gate.address
        return proc
    raise LaunchError("could not start the SuperLink")  # not reached


def start_fleet_gate(group: ProcessGroup, listen: list[tuple[str, int]], backend: str, tls,
                     log_path: Path, ready_timeout: float = 30.0) -> Proc:
    """fl_server.fleet_gate on ``listen``, forwarding Fleet requests to ``backend``."""
    ca, cert, key = tls
    argv = [sys.executable, "-m", "fl_server.fleet_gate", "--backend", backend,
            "--cert", cert, "--key", key, "--ca", ca]
    for h, p in listen:
        argv += ["--listen", f"[{h}]:{p}" if ":" in h else f"{h}:{p}"]
    gate = group.start("fleet-gate", argv, log_path)
    try:
        gate.wait_for_log(GATE_READY, ready_timeout)
    except LaunchError:
        gate.stop(5.0)
        raise
    h, p = listen[0]
    gate.address = f"[{h}]:{p}" if ":" in h else f"{h}:{p}"
    gate.port = p
    return gate
