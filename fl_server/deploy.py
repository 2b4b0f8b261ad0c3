"""Start the coordinator's processes: the SuperLink (TLS, node authentication,
the roster registered) and the run. Used by `fedvox server` and `fedvox demo`;
every process is started in a fl_common.supervise.ProcessGroup, so Ctrl-C or a
failure stops all of them. A site's processes: fl_client.site.
"""
from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

from fl_common.supervise import LaunchError, Proc, ProcessGroup

from .flwr_cli import RunResult, flwr_run, register_sites, write_cli_config
from .superlink import start_superlink as _start_superlink

APP_DIR = Path(__file__).parent / "flower_app"


def write_spec(run_dir: Path, federation: Path, data_base: Path | None, secure: bool, roster: Path | None,
               provision: Path | None = None, **extra) -> Path:
    """The run's spec.json for the ServerApp. ``provision``: the provisioning directory, whose
    run-record key signs the run's manifest (fl_server.record_manifest); without one the
    run is unsigned and `fedvox export` refuses to sign its model."""
    from .records import SPEC
    run_dir = Path(run_dir).resolve()  # the ServerApp runs in another directory: hand it absolute paths
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"federation": str(Path(federation).resolve()),
            "data_base": str(Path(data_base).resolve()) if data_base else None,
            "run_dir": str(run_dir.resolve()), "secure_aggregation": "secagg" if secure else "off",
            "roster": str(Path(roster).resolve()) if roster else None,
            "provision": str(Path(provision).resolve()) if provision else None,
            **{k: v for k, v in extra.items() if v is not None}}
    path = run_dir / SPEC
    path.write_text(json.dumps(spec, indent=1))
    return path


def provisioned_port(prov) -> int:
    return int(prov.superlink_address.rpartition(":")[2])


def parse_listen(text: str, default_port: int) -> tuple[str, int]:
    """`--listen` value: HOST, HOST:PORT, [V6] or [V6]:PORT."""
    t = text.strip()
    if t.startswith("["):
        host, _, rest = t[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (rest or str(default_port))
    elif t.count(":") == 1:
        host, _, port = t.partition(":")
    else:
        host, port = t, str(default_port)  # a bare name, IPv4 or IPv6 address
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: expected HOST[:PORT]")
    return host, int(port)


def _local(ip: str) -> bool:
    """Can this machine bind ``ip`` (is it one of its addresses)?"""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, 0))
            return True
        except OSError:
            return False


def resolve_listen(pairs, what: str) -> list[tuple[str, int]]:
    """Names -> the addresses of this machine they resolve to (each once).

    Raises LaunchError when a non-loopback name has none here: a site would
    connect to an address nobody on this machine serves.
    """
    out: list[tuple[str, int]] = []
    missing = []
    for host, port in pairs:
        try:
            ips = [] if host in ("0.0.0.0", "::") else sorted(
                {ai[4][0] for ai in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
        except socket.gaierror as e:
            raise LaunchError(f"{what}: cannot resolve {host!r}: {e.strerror}") from None
        ips = ips if host not in ("0.0.0.0", "::") else [host]
        here = [ip for ip in ips if ip in ("0.0.0.0", "::") or _local(ip)]
        if not here and not host.startswith(("127.", "localhost")):
            missing.append(f"{host} ({', '.join(ips)})")
        out += [(ip, port) for ip in here if (ip, port) not in out]
    if missing:
        raise LaunchError(f"{what}: {'; '.join(missing)} is not an address of this machine. Sites connect "
                          "to it, so nothing would serve them; give `--listen ADDRESS` (an address of "
                          "this machine, e.g. 0.0.0.0 behind NAT) or re-issue the certificate")
    if not out:
        raise LaunchError(f"{what}: no address to listen on")
    return out


def fleet_listen(prov, listen=None, port: int | None = None) -> list[tuple[str, int]]:
    """Where the Fleet gate serves: ``listen`` ((host, port) pairs) if given,
    else every provisioned host name/IP, on ``port`` or the provisioned port."""
    if listen:
        return resolve_listen(listen, "--listen")
    port = port or provisioned_port(prov)
    return resolve_listen([(h, port) for h in prov.hosts], f"{prov.root / 'federation.json'} hosts")


def start_superlink(group: ProcessGroup, prov, work: Path, port: int | None, insecure: bool,
                    listen: list[tuple[str, int]] | None = None) -> tuple[Proc, Path]:
    """SuperLink with TLS + node authentication (unless --insecure), roster registered.

    ``listen``: where sites reach it (see fleet_listen); the SuperLink itself
    (all of Flower's APIs) is on loopback only. None: the old loopback-only
    set-up (tests and the local demo), SuperLink on 127.0.0.1:``port``
    (None: a free one), sites connecting there. ``insecure`` serves loopback only.
    """
    tls = None if insecure else (prov.ca_cert, prov.server_cert, prov.server_key)
    if insecure and listen and any(not ip.startswith("127.") and ip != "::1" for ip, _ in listen):
        raise LaunchError("--insecure serves loopback only (no TLS, no node auth): drop --listen")
    if listen:  # the SuperLink's own port is then private (a free one); insecure: loopback, as asked
        port = listen[0][1] if insecure else None
    sl = _start_superlink(work / "superlink", port=port, tls=tls, auth=not insecure,
                          group=group, log_path=work / "superlink.log",
                          fleet_listen=() if insecure else (listen or ()))
    if sl.gate is not None:
        print(f"Fleet API (sites) on {', '.join(f'{h}:{p}' for h, p in listen)}; Control and "
              f"ServerAppIo APIs on {sl.address} only", file=sys.stderr)
    cli = work / "flwr-cli"
    write_cli_config(cli, prov.federation, sl.address, None if insecure else prov.ca_cert, insecure=insecure)
    if not insecure:
        register_sites(cli, prov.federation, prov.roster)
    return sl, cli


def run_federation(cli: Path, federation_name: str, spec: Path, timeout: float, log_path: Path) -> RunResult:
    return flwr_run(APP_DIR, cli, federation_name, {"spec": str(spec)}, stream=True, timeout=timeout,
                      log_path=log_path)
