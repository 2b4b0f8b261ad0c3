"""Start the federation's processes: the coordinator's SuperLink and run, and
each site's worker + SuperNode. Used by `fedvox server`, `fedvox site` and
`fedvox demo`; every process is started in a launch.ProcessGroup, so Ctrl-C
or a failure stops all of them.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import launch as L

APP_DIR = Path(__file__).parent / "flower_app"


@dataclass
class SiteProcs:
    name: str
    worker: L.Proc
    supernode: L.Proc | None
    socket: Path


def start_worker(group: L.ProcessGroup, name: str, federation: Path, site_toml: Path, work: Path,
                 data_base: Path | None = None, data_root: Path | None = None, device: str | None = None,
                 ready_timeout: float = 600.0) -> tuple[L.Proc, Path]:
    """The site worker; returns once its cache is built and it serves on its socket."""
    work.mkdir(parents=True, exist_ok=True)
    sock = work / "worker.sock"
    ready = work / "worker.ready"
    ready.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "fl_client.worker_server", "--federation", str(federation),
            "--site", str(site_toml), "--work", str(work), "--socket", str(sock), "--ready-file", str(ready)]
    if data_base:
        argv += ["--data-base", str(data_base)]
    if data_root:
        argv += ["--data-root", str(data_root)]
    if device:
        argv += ["--device", device]
    p = group.start(f"worker-{name}", argv, work / "worker.log")
    deadline = time.monotonic() + ready_timeout
    while not ready.exists():
        if not p.alive():
            raise L.LaunchError(f"site worker {name} exited ({p.returncode}):\n{p.tail()}")
        if time.monotonic() > deadline:
            raise L.LaunchError(f"site worker {name} not ready within {ready_timeout:.0f} s:\n{p.tail()}")
        time.sleep(0.2)
    return p, sock


def node_config(name: str, sock: Path, work: Path, auth_key: Path | None, roster: Path | None,
                audit_dir: Path | None = None) -> dict:
    cfg = {"site-name": name, "worker-socket": str(sock), "state-dir": str(work / "state")}
    if audit_dir:
        cfg["audit-dir"] = str(audit_dir)
    if auth_key:
        cfg["auth-key"] = str(auth_key)
    if roster:
        cfg["roster"] = str(roster)
    return cfg


def start_site(group: L.ProcessGroup, kit, federation: Path, site_toml: Path, work: Path,
               superlink: str, data_base: Path | None = None, data_root: Path | None = None,
               insecure: bool = False, device: str | None = None, audit_dir: Path | None = None) -> SiteProcs:
    """Worker first (its cache may take a while), then the SuperNode that connects it."""
    worker, sock = start_worker(group, kit.name, federation, site_toml, work, data_base, data_root, device)
    roster = work / "roster.json"
    roster.write_text(json.dumps(kit.roster))
    sn = L.start_supernode(kit.name, superlink, None if insecure else kit.ca_cert,
                           None if insecure else kit.auth_key,
                           node_config(kit.name, sock, work, kit.auth_key, roster, audit_dir),
                           log_path=work / "supernode.log", workdir=work, insecure=insecure, group=group,
                           wait_connected=120)
    return SiteProcs(kit.name, worker, sn, sock)


def write_spec(run_dir: Path, federation: Path, data_base: Path | None, secure: bool, roster: Path | None,
               **extra) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"federation": str(Path(federation).resolve()), "data_base": str(data_base) if data_base else None,
            "run_dir": str(run_dir.resolve()), "secure_aggregation": "secagg" if secure else "off",
            "roster": str(roster) if roster else None, **{k: v for k, v in extra.items() if v is not None}}
    path = run_dir / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def start_superlink(group: L.ProcessGroup, prov, work: Path, port: int | None, insecure: bool) -> tuple[L.Proc, Path]:
    """SuperLink with TLS + node authentication (unless --insecure), roster registered."""
    tls = None if insecure else (prov.ca_cert, prov.server_cert, prov.server_key)
    sl = L.start_superlink(work / "superlink", port=port, tls=tls, auth=not insecure, group=group,
                           log_path=work / "superlink.log")
    cli = work / "flwr-cli"
    L.write_cli_config(cli, prov.federation, sl.address, None if insecure else prov.ca_cert, insecure=insecure)
    if not insecure:
        L.register_sites(cli, prov.federation, prov.roster)
    return sl, cli


def run_federation(cli: Path, federation_name: str, spec: Path, timeout: float, log_path: Path) -> L.RunResult:
    return L.flwr_run(APP_DIR, cli, federation_name, {"spec": str(spec)}, stream=True, timeout=timeout,
                      log_path=log_path)
