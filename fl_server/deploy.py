"""Start the coordinator's processes: the SuperLink (TLS, node authentication,
the roster registered) and the run. Used by `fedvox server` and `fedvox demo`;
every process is started in a fl_common.supervise.ProcessGroup, so Ctrl-C or a
failure stops all of them. A site's processes: fl_client.site.
"""
from __future__ import annotations

import json
from pathlib import Path

from fl_common.supervise import Proc, ProcessGroup

from .flwr_cli import RunResult, flwr_run, register_sites, write_cli_config
from .superlink import start_superlink as _start_superlink

APP_DIR = Path(__file__).parent / "flower_app"


def write_spec(run_dir: Path, federation: Path, data_base: Path | None, secure: bool, roster: Path | None,
               **extra) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {"federation": str(Path(federation).resolve()), "data_base": str(data_base) if data_base else None,
            "run_dir": str(run_dir.resolve()), "secure_aggregation": "secagg" if secure else "off",
            "roster": str(roster) if roster else None, **{k: v for k, v in extra.items() if v is not None}}
    path = run_dir / "spec.json"
    path.write_text(json.dumps(spec, indent=1))
    return path


def start_superlink(group: ProcessGroup, prov, work: Path, port: int | None, insecure: bool) -> tuple[Proc, Path]:
    """SuperLink with TLS + node authentication (unless --insecure), roster registered."""
    tls = None if insecure else (prov.ca_cert, prov.server_cert, prov.server_key)
    sl = _start_superlink(work / "superlink", port=port, tls=tls, auth=not insecure, group=group,
                           log_path=work / "superlink.log")
    cli = work / "flwr-cli"
    write_cli_config(cli, prov.federation, sl.address, None if insecure else prov.ca_cert, insecure=insecure)
    if not insecure:
        register_sites(cli, prov.federation, prov.roster)
    return sl, cli


def run_federation(cli: Path, federation_name: str, spec: Path, timeout: float, log_path: Path) -> RunResult:
    return flwr_run(APP_DIR, cli, federation_name, {"spec": str(spec)}, stream=True, timeout=timeout,
                      log_path=log_path)
