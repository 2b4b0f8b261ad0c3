"""`fedvox site`: a hospital starts its own processes from its startup kit and
its own key directory -- the roster checked against the fingerprint the site
pinned first (fl_client.enroll), then the site worker (it builds the
preprocessed cache, which may take a while), then the SuperNode that connects
it to the coordinator's SuperLink with the site-made key, and the long-lived
ClientApp runner that takes its tasks (fl_client.runner: only the installed
ClientApp runs; a shipped app is checked and never imported). All run in one
ProcessGroup, so Ctrl-C or a failure stops everything."""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fl_common import keys as K
from fl_common.config import load_federation, read_site_file
from fl_common.kit import KIT_ROSTER, SiteKit, read_kit
from fl_common.supervise import LaunchError, Proc, ProcessGroup

from .enroll import check_trust, read_keys
from .supernode import REJOIN_S, start_supernode


@dataclass
class SiteProcs:
    name: str
    worker: Proc
    supernode: Proc | None
    socket: Path


def start_worker(group: ProcessGroup, name: str, federation: Path, site_toml: Path, work: Path,
                 data_base: Path | None = None, data_root: Path | None = None, device: str | None = None,
                 ready_timeout: float = 600.0) -> tuple[Proc, Path]:
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
            raise LaunchError(f"site worker {name} exited ({p.returncode}):\n{p.tail()}")
        if time.monotonic() > deadline:
            raise LaunchError(f"site worker {name} not ready within {ready_timeout:.0f} s:\n{p.tail()}")
        time.sleep(0.2)
    return p, sock


def node_config(name: str, sock: Path, work: Path, auth_key: Path | None, roster: Path | None,
                audit_dir: Path | None = None, site_toml: Path | None = None,
                colluding_sites: int | None = None, roster_fingerprint: str | None = None) -> dict:
    """What the SuperNode hands every ClientApp (fl_client.client_app reads it)."""
    cfg = {K.NODE_SITE_NAME: name, K.NODE_WORKER_SOCKET: str(sock), K.NODE_STATE_DIR: str(work / "state")}
    if site_toml:  # its [policy] bounds every request (fl_client.policy)
        cfg[K.NODE_SITE_CONFIG] = str(Path(site_toml).resolve())
    if colluding_sites is not None:  # the site's own bound, from its copy of the federation
        cfg[K.NODE_COLLUDING_SITES] = int(colluding_sites)
    if audit_dir:
        cfg[K.NODE_AUDIT_DIR] = str(audit_dir)
    if auth_key:
        cfg[K.NODE_AUTH_KEY] = str(auth_key)
    if roster:
        cfg[K.NODE_ROSTER] = str(roster)
    if roster_fingerprint:
        cfg[K.NODE_ROSTER_FINGERPRINT] = roster_fingerprint
    return cfg


def start_site(group: ProcessGroup, kit: SiteKit, keys_dir: Path, federation: Path, site_toml: Path,
               work: Path, superlink: str, data_base: Path | None = None, data_root: Path | None = None,
               insecure: bool = False, device: str | None = None, audit_dir: Path | None = None,
               trust_on_first_use: bool = False) -> SiteProcs:
    """The pinned roster checked (nothing starts otherwise), then the worker (its
    cache may take a while), then the SuperNode with the site-made key."""
    keys = read_keys(keys_dir)
    pin = check_trust(kit, keys.dir, trust_on_first_use)
    worker, sock = start_worker(group, kit.name, federation, site_toml, work, data_base, data_root, device)
    roster = work / KIT_ROSTER
    roster.write_text(json.dumps(kit.roster))  # checked again against the pin where secagg loads it
    sn = start_supernode(kit.name, superlink, None if insecure else kit.ca_cert,
                         None if insecure else keys.auth_key,
                         node_config(kit.name, sock, work, keys.auth_key, roster, audit_dir, site_toml,
                                     load_federation(federation, require_sites=False).federation.colluding_sites,
                                     pin),
                         log_path=work / "supernode.log", workdir=work, insecure=insecure, group=group,
                         wait_connected=120, runner=True, rejoin_s=REJOIN_S)
    # the long-lived runner checks every shipped app and runs only the installed ClientApp
    sn.keeper.wait_ready(120)
    return SiteProcs(kit.name, worker, sn, sock)


def run_site(kit_dir, keys_dir, work, data_root, *, federation=None, superlink: str | None = None,
             insecure: bool = False, device: str | None = None, trust_on_first_use: bool = False) -> int:
    """`fedvox site`: start this site from its kit and key directory and keep it
    up until a process exits (status 1) or Ctrl-C / SIGTERM (everything is
    stopped either way). The ClientApp runner is restarted by its keeper; the
    site stops if the keeper gives up."""
    from .site_status import write_site_pid
    kit = read_kit(kit_dir)
    fed = Path(federation) if federation else kit.dir / "federation.toml"
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True, mode=0o750)
    os.chmod(work, 0o750)  # the site's logs and state: not for other local users
    with ProcessGroup("fedvox-site") as group:
        write_site_pid(work, kit.name, superlink or kit.superlink_address, group.tag)  # `fedvox site status`
        sp = start_site(group, kit, Path(keys_dir), fed, kit.site_toml, Path(work),
                        superlink or kit.superlink_address, data_root=Path(data_root), insecure=insecure,
                        device=device, trust_on_first_use=trust_on_first_use)
        print(f"{kit.name}: worker on {sp.socket}, SuperNode connected; Ctrl-C to stop", file=sys.stderr)
        # the kit's site.toml came from the coordinator: say what this site answers,
        # so the hospital reviews it (docs/threat-model.md)
        print(f"{kit.name}: site policy from {kit.site_toml}: {read_site_file(kit.site_toml).policy.model_dump()}",
              file=sys.stderr)
        keeper = sp.supernode.keeper
        while sp.worker.alive() and sp.supernode.alive() and (keeper.proc.alive() or keeper.watching()):
            time.sleep(2)
        print(f"{kit.name}: a process exited; stopping", file=sys.stderr)
        return 1
