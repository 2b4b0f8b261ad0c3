"""The deployment-engine scaffolding the Flower benches share: a throwaway
Flower app directory for a bench module, and a federation on loopback
(each site's key made by `site init` in its own key directory, provisioned
from the requests, SuperLink with TLS + SuperNode authentication, registered
site keys, one SuperNode per site with its own key) started inside a
fl_common.supervise.ProcessGroup.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_client.supernode import start_supernode  # noqa: E402
from fl_common.kit import KIT_AUTH_KEY, KIT_CA  # noqa: E402
from fl_server.demo import enroll_and_provision  # noqa: E402
from fl_common.supervise import ProcessGroup  # noqa: E402
from fl_server.flwr_cli import flwr_run, register_sites, wait_for_nodes, write_cli_config  # noqa: E402
from fl_server.superlink import start_superlink  # noqa: E402

FED = "fvbench"

_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "0.1.0"
description = "{description}"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedvox"

[tool.flwr.app.components]
serverapp = "{module}:{server}"
clientapp = "{module}:{client}"

[tool.flwr.app.config]
{config}
"""


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_app(dst: Path, module: Path, name: str, description: str, server: str, client: str,
             config: dict) -> Path:
    """An app directory holding ``module`` and a pyproject naming its server and
    client apps; ``config`` is the run config's defaults (flwr run overrides them)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(module, dst / module.name)
    (dst / "pyproject.toml").write_text(_PYPROJECT.format(
        name=name, description=description, module=module.stem, server=server, client=client,
        config="\n".join(f"{k} = {_toml_value(v)}" for k, v in config.items())))
    return dst


def site_key(work: Path, site: str) -> Path:
    """The site's own enrollment key, as `start_federation` made it (at the "site")."""
    return work / "site-keys" / site / KIT_AUTH_KEY


def start_federation(work: Path, sites: list[str], group: ProcessGroup,
                     node_config: Callable[[str, Path, Path], dict], supernode_kw: dict | None = None):
    """Provision ``sites`` under ``work``, start the SuperLink and one SuperNode
    a site, and wait until all are connected. ``node_config(site, kit, site_dir)``
    gives each SuperNode's node config; ``supernode_kw`` goes to start_supernode
    (e.g. runner=...). Returns (provision, cli config dir)."""
    t0 = time.monotonic()
    prov, _ = enroll_and_provision(work, sites, FED)  # the bench plays every site's `site init`
    sl = start_superlink(work / "superlink", tls=(prov.ca_cert, prov.server_cert, prov.server_key),
                         auth=True, group=group, ready_timeout=90)
    cli = work / "cli"
    write_cli_config(cli, FED, sl.address, prov.ca_cert)
    register_sites(cli, FED, prov.roster)
    for s in sites:
        kit, sw = prov.site_kits[s], work / "sites" / s
        sw.mkdir(parents=True, exist_ok=True)
        start_supernode(s, sl.address, kit / KIT_CA, site_key(work, s), node_config(s, kit, sw),
                        workdir=sw, group=group, wait_connected=90, **(supernode_kw or {}))
    wait_for_nodes(cli, FED, len(sites), timeout=90)
    print(f"federation up in {time.monotonic() - t0:.1f} s ({work})", flush=True)
    return prov, cli


def run_app(app: Path, cli: Path, config: dict, work: Path, tag: str, timeout: float) -> dict:
    """`flwr run` the app with ``config`` plus out-file=<work>/<tag>.json, and
    return what the app wrote there ({"status": "no output"} if nothing); a
    failed run prints Flower's reason and the tail of <work>/run-<tag>.log."""
    out = work / f"{tag}.json"
    res = flwr_run(app, cli, FED, {**config, "out-file": str(out)}, timeout=timeout,
                   log_path=work / f"run-{tag}.log")
    print(f"{tag} run: {res.status} in {res.seconds:.1f} s", flush=True)
    rec = json.loads(out.read_text()) if out.exists() else {"status": "no output"}
    if not res.ok or rec.get("status") != "done":
        log = Path(res.log_path).read_text(errors="replace") if res.log_path else ""
        print(f"{tag} run failed: {res.details}\n" + "\n".join(log.splitlines()[-40:]), flush=True)
    return rec
