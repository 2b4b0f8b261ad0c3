"""Start a site's own `flower-supernode`: it connects to the coordinator's
SuperLink with the federation CA and the site's auth key, and hands its node
config (worker socket, roster, state directory) to every ClientApp. Flower's
quirks: fl_common.flower."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import tomli_w  # a dependency of flwr (its CLI writes config.toml with it)

from fl_common.flower import BIN_DIR, flower_env
from fl_common.supervise import LaunchError, Proc, ProcessGroup, default_group, free_port

SUPERNODE_CONNECTED = r"SuperNode ID: \d+"  # logged once the SuperLink accepted it (Flower 1.41)


def start_supernode(name: str, superlink_addr: str, ca_cert, auth_key, node_config: Mapping | None,
                    clientappio_port: int | None = None, log_path=None, *, workdir=None,
                    insecure: bool = False, group: ProcessGroup | None = None,
                    wait_connected: float | None = 60.0, max_wait_time: float | None = None,
                    extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None) -> Proc:
    """Start `flower-supernode` for site ``name``.

    ``clientappio_port``: its local Runtime API port (None: a free one) --
    every SuperNode on a host needs its own. ``node_config`` goes through a
    TOML file (no shell quoting of paths). ``wait_connected``: seconds to wait
    for the SuperLink to accept the node (None: return at once; a refused
    node then exits by itself). ``workdir`` (default: the log's directory /
    name) holds its FLWR_HOME and node_config.toml. ``env``: extra environment
    for it and its ClientApps (e.g. CUDA_VISIBLE_DEVICES).
    """
    if workdir is None:
        if log_path is None:
            raise ValueError("give workdir or log_path")
        workdir = Path(log_path).absolute().parent / name
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = Path(log_path) if log_path else workdir / "supernode.log"
    flwr_home = workdir / "flwr_home"
    flwr_home.mkdir(exist_ok=True)
    group = group or default_group()
    opts: list = []
    if insecure:
        opts.append("--insecure")
    else:
        if ca_cert is None:
            raise LaunchError("a SuperNode needs the federation CA (or insecure=True)")
        opts += ["--root-certificates", Path(ca_cert).absolute()]
    if auth_key is not None:
        opts += ["--auth-supernode-private-key", Path(auth_key).absolute()]
    if node_config:
        nc = workdir / "node_config.toml"  # Flower reads a lone *.toml argument as a file
        nc.write_text(tomli_w.dumps(dict(node_config)))
        opts += ["--node-config", nc]
    if max_wait_time is not None:
        opts += ["--max-wait-time", str(max_wait_time)]
    opts += list(extra_args)

    pick = clientappio_port is None
    for attempt in range(3 if pick else 1):
        port = free_port() if pick else int(clientappio_port)
        argv = [BIN_DIR / "flower-supernode", "--superlink", superlink_addr,
                "--port", str(port), *opts]
        proc = group.start(f"supernode:{name}", argv, log_path, env=flower_env(flwr_home, env),
                           cwd=workdir)
        proc.port, proc.flwr_home, proc.workdir = port, flwr_home, workdir
        proc.address = f"127.0.0.1:{port}"
        if wait_connected is None:
            return proc
        try:
            proc.wait_for_log(SUPERNODE_CONNECTED, wait_connected)
            return proc
        except LaunchError:
            in_use = "address already in use" in proc.log_text()[proc.log_start:].lower()
            proc.stop(5.0)
            if pick and in_use and attempt < 2:
                continue  # our free port was taken before the SuperNode bound it
            raise
    raise LaunchError("could not start the SuperNode")  # not reached
