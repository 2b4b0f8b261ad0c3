"""Start the coordinator's `flower-superlink`: TLS with the provisioned
certificate, SuperNode authentication, its state database, one HTTPS port
(Flower 1.41 serves the Control, Fleet and Runtime APIs on `--port`). Flower's
quirks: fl_common.flower."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from fl_common.flower import BIN_DIR, flower_env
from fl_common.supervise import LaunchError, Proc, ProcessGroup, default_group, free_port

SUPERLINK_READY = r"Uvicorn running on https?://"  # its readiness log line (Flower 1.41)


def _tls_paths(tls) -> tuple[Path, Path, Path] | None:
    if tls is None:
        return None
    ca, cert, key = (Path(p).absolute() for p in tls)
    for p in (ca, cert, key):
        if not p.is_file():
            raise LaunchError(f"TLS file not found: {p}")
    return ca, cert, key


def start_superlink(workdir, port: int | None = None, tls=None, auth: bool = False,
                    log_path=None, *, host: str = "127.0.0.1", database: str | None = "state.db",
                    group: ProcessGroup | None = None, ready_timeout: float = 90.0,
                    extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None) -> Proc:
    """Start `flower-superlink` and wait until its HTTPS port serves.

    ``tls``: (ca.crt, server.pem, server.key) or None for --insecure (local
    development only). ``auth``: SuperNode authentication (needs TLS).
    ``port``: None picks a free one. ``database``: file name in ``workdir``
    (None: in memory) so a restarted SuperLink keeps runs and registered nodes.
    ``env``: extra environment for it and the ServerApps it starts.
    The returned Proc has ``address`` ("127.0.0.1:PORT" for a loopback/any host),
    ``port`` and ``flwr_home``.
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    tls_p = _tls_paths(tls)
    if auth and tls_p is None:
        raise LaunchError("SuperNode authentication needs TLS (Flower refuses --insecure with it)")
    log_path = Path(log_path) if log_path else workdir / "superlink.log"
    flwr_home = workdir / "flwr_home"
    flwr_home.mkdir(exist_ok=True)
    group = group or default_group()
    pick = port is None

    for attempt in range(3 if pick else 1):
        p = free_port(host if host not in ("0.0.0.0", "::") else "127.0.0.1") if pick else int(port)
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
        connect_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        proc.address = f"{connect_host}:{p}" if ":" not in connect_host else f"[{connect_host}]:{p}"
        proc.port, proc.flwr_home, proc.workdir = p, flwr_home, workdir
        return proc
    raise LaunchError("could not start the SuperLink")  # not reached
