"""`fedvox demo --hosts`: the demo's federation with the coordinator and each
site in its own network namespace (fl_server.netns), each running the real
`fedvox server` / `fedvox site` command, sites reaching the coordinator by its
host name over TLS. Everything is stopped by PID and the namespaces removed
on the way out, whatever happens.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from rich.live import Live

from fl_common.supervise import LaunchError, ProcessGroup

from .netns import Rehearsal, namespaces_available
from .prepare import console


def _fill_kit(kit: Path, site_toml: Path) -> None:
    """The kit's [site] table as the hospital's admin would fill it in (its modality)."""
    m = re.search(r'^modality\s*=\s*"(\w+)"', site_toml.read_text(), re.M)
    if m:
        p = kit / "site.toml"
        p.write_text(re.sub(r'^modality = "\w+"', f'modality = "{m.group(1)}"', p.read_text(), flags=re.M))


def run_on_hosts(fed, federation: Path, data_base: Path | None, prov, keys: dict, work: Path, run_dir: Path,
                 secure: bool,
                 rounds: int | None, timeout: float, table) -> int:
    why = namespaces_available()
    if why:
        console.print(f"[red]--hosts needs network namespaces: {why}")
        return 2
    py = [sys.executable, "-m", "fl_server.cli"]
    cmd = ["server", "--provision", prov.root, "--federation", federation, "--run-dir", run_dir,
           "--work", work / "server", "--timeout", str(timeout), "--connect-timeout", "300"]
    cmd += ["--data-base", data_base] if data_base else []
    cmd += ["--rounds", str(rounds)] if rounds else []
    cmd += [] if secure else ["--no-secure-aggregation"]
    with ProcessGroup("fedvox-demo-hosts") as group, Rehearsal([s.name for s in fed.sites]) as rh:
        console.print(f"namespaces: coordinator {rh.coord} ({rh.coord_ip}), " +
                      ", ".join(f"{s} {ns} ({rh.site_ip[s]})" for s, ns in rh.sites.items()))
        server = group.start("server", [*rh.exec_prefix(), *py, *cmd], work / "server.log")
        try:
            with console.status("starting the coordinator (SuperLink on loopback, Fleet gate on its address)"):
                server.wait_for_log(r"sites connect to ", 120)
        except LaunchError as e:
            console.print(f"[red]{e}")
            return 1
        console.print(server.log_text().strip().splitlines()[-1])
        for s in fed.sites:
            _fill_kit(prov.site_kits[s.name], Path(s.config_path))
            group.start(f"site-{s.name}", [*rh.exec_prefix(s.name), *py, "site", "--kit", prov.site_kits[s.name],
                                           "--keys", keys[s.name],
                                           "--data", Path(s.datalist_path).parent, "--federation", federation,
                                           "--work", work / "sites-work" / s.name], work / f"site-{s.name}.log")
            console.print(f"  {s.name}: `fedvox site` started in {rh.sites[s.name]}")
        deadline = time.monotonic() + timeout
        with Live(table(), console=console, refresh_per_second=1) as live:
            while server.wait(2.0) is None and time.monotonic() < deadline:
                live.update(table())
        rc = server.returncode
    if rc != 0:
        console.print(f"[red]federated run did not complete (server exit {rc}); logs: {work}")
        return 1
    return 0
