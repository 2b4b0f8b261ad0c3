"""Start a site's own `flower-supernode`: it connects to the coordinator's
SuperLink with the federation CA and the site's auth key, and hands its node
config (worker socket, roster, state directory) to every ClientApp. Flower's
quirks: fl_common.flower.

With ``runner=True`` (what `fedvox site` uses) the SuperNode runs with
`--isolation process` and a fresh SuperExec auth secret, and fedvox's own
long-lived runner (fl_client.runner) executes every task: it checks the
shipped FAB and runs only the installed ClientApp. A RunnerKeeper thread
restarts the runner if it dies while its SuperNode lives. Without it, Flower's
SuperExec starts one `flwr-clientapp` per message (any app: tests' tiny app)."""
from __future__ import annotations

import os
import secrets
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import tomli_w  # a dependency of flwr (its CLI writes config.toml with it)

from fl_common.flower import BIN_DIR, flower_env
from fl_common.supervise import LaunchError, Proc, ProcessGroup, default_group, free_port

SUPERNODE_CONNECTED = r"SuperNode ID: \d+"  # logged once the SuperLink accepted it (Flower 1.41)
# -P: the runner's cwd (a site work dir) never goes on sys.path.
RUNNER_CMD = [sys.executable, "-P", "-m", "fl_client.runner"]
RUNNER_READY = r"fedvox runner: ready"  # fl_client.runner.READY_LINE (not imported: it imports flwr)
# A SuperNode restarted with the same key is refused while the SuperLink still counts its
# previous node online (HEARTBEAT_DEFAULT_INTERVAL x HEARTBEAT_PATIENCE = 60 s in 1.41).
ACTIVATE_REFUSED = "Failed to activate SuperNode"
REJOIN_S, REJOIN_RETRY_S = 150.0, 5.0
# flower-supernode itself, through the entry point that shortens its literal idle waits
SUPERNODE_CMD = [sys.executable, "-P", "-m", "fl_client.supernode_main"]


def start_supernode(name: str, superlink_addr: str, ca_cert, auth_key, node_config: Mapping | None,
                    clientappio_port: int | None = None, log_path=None, *, workdir=None,
                    insecure: bool = False, group: ProcessGroup | None = None,
                    wait_connected: float | None = 60.0, max_wait_time: float | None = None,
                    extra_args: Iterable[str] = (), env: Mapping[str, str] | None = None,
                    runner: bool | Sequence[str] = False, stock: bool = False,
                    rejoin_s: float = 0.0) -> Proc:
    """Start `flower-supernode` for site ``name``.

    ``clientappio_port``: its local Runtime API port (None: a free one) --
    every SuperNode on a host needs its own. ``node_config`` goes through a
    TOML file (no shell quoting of paths). ``wait_connected``: seconds to wait
    for the SuperLink to accept the node (None: return at once; a refused
    node then exits by itself). ``workdir`` (default: the log's directory /
    name) holds its FLWR_HOME and node_config.toml. ``env``: extra environment
    for it and its ClientApps (e.g. CUDA_VISIBLE_DEVICES). ``stock``: Flower's
    own `flower-supernode` with its 3 s idle poll (a benchmark's reference).
    ``rejoin_s``: for this long, a refused activation is retried (a site restarted
    with its enrolled key; Flower gives an unknown key the same refusal, so the
    caller decides).
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
    secret_file = workdir / "superexec.secret"
    if runner:
        # Only a holder of this secret may acquire the site's tasks on the local Runtime API.
        secret_file.unlink(missing_ok=True)
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        opts += ["--isolation", "process", "--superexec-auth-secret-file", secret_file]

    pick = clientappio_port is None
    rejoin_until = time.monotonic() + rejoin_s
    attempt = 0
    while True:
        attempt += 1
        port = free_port() if pick else int(clientappio_port)
        argv = [*([BIN_DIR / "flower-supernode"] if stock else SUPERNODE_CMD), "--superlink", superlink_addr,
                "--port", str(port), *opts]
        proc = group.start(f"supernode:{name}", argv, log_path, env=flower_env(flwr_home, env),
                           cwd=workdir)
        proc.port, proc.flwr_home, proc.workdir = port, flwr_home, workdir
        proc.address = f"127.0.0.1:{port}"
        proc.keeper = None
        if runner:
            cmd = RUNNER_CMD if runner is True else list(runner)
            proc.keeper = RunnerKeeper(group, name, proc, secret_file, workdir / "runner.log",
                                       flower_env(flwr_home, env), workdir, cmd)
        if wait_connected is None:
            return proc
        try:
            proc.wait_for_log(SUPERNODE_CONNECTED, wait_connected)
            return proc
        except LaunchError:
            text = proc.log_text()[proc.log_start:]
            if proc.keeper:
                proc.keeper.stop()
            proc.stop(5.0)
            if pick and "address already in use" in text.lower() and attempt < 3:
                continue  # our free port was taken before the SuperNode bound it
            if ACTIVATE_REFUSED in text and time.monotonic() + REJOIN_RETRY_S < rejoin_until:
                # a restarted site: the SuperLink still holds this key's previous node as
                # online until its heartbeats lapse (~60 s in Flower 1.41); try again
                print(f"{name}: the SuperLink refused to activate this SuperNode (a restarted site waits "
                      f"until its previous connection lapses, ~60 s; an unregistered key never gets in); "
                      f"retrying for {max(rejoin_until - time.monotonic(), 0):.0f} s more", file=sys.stderr)
                time.sleep(REJOIN_RETRY_S)
                continue
            raise


class RunnerKeeper:
    """Starts fl_client.runner for one SuperNode and restarts it when it dies
    while the SuperNode lives (at most ``max_restarts``; each restart is a log
    line). Stopped with its group (the group's ``stopping`` flag) or stop()."""

    def __init__(self, group: ProcessGroup, name: str, supernode: Proc, secret_file: Path, log_path: Path,
                 env: Mapping[str, str], cwd: Path, cmd: Sequence[str] = RUNNER_CMD,
                 max_restarts: int = 20, check_s: float = 0.5):
        self.group, self.name, self.supernode = group, name, supernode
        self.argv = [*cmd, "--runtime-api", supernode.address,
                     "--secret-file", str(secret_file), "--supernode-pid", str(supernode.pid)]
        self.log_path, self.env, self.cwd = log_path, dict(env), cwd
        self.max_restarts, self.check_s, self.restarts = max_restarts, check_s, 0
        self._stop = threading.Event()
        self.proc = self._start()
        self._th = threading.Thread(target=self._watch, daemon=True, name=f"runner-keeper:{name}")
        self._th.start()

    def _start(self) -> Proc:
        return self.group.start(f"runner:{self.name}", self.argv, self.log_path, env=self.env, cwd=self.cwd)

    def watching(self) -> bool:
        """Whether it will still restart a dead runner."""
        return self._th.is_alive()

    def wait_ready(self, timeout: float) -> None:
        self.proc.wait_for_log(RUNNER_READY, timeout)

    def _watch(self) -> None:
        while not self._stop.wait(self.check_s):
            if self.proc.alive():
                continue
            if self.group.stopping or not self.supernode.alive():
                return
            if self.restarts >= self.max_restarts:
                print(f"runner:{self.name} died {self.restarts + 1} times; not restarting", file=sys.stderr)
                return
            self.restarts += 1
            with open(self.log_path, "ab") as f:
                f.write(f"# fedvox: runner exited with {self.proc.returncode}; restart {self.restarts}\n".encode())
            time.sleep(min(0.2 * self.restarts, 2.0))  # no tight crash loop
            if self._stop.is_set() or self.group.stopping or not self.supernode.alive():
                return
            self.proc = self._start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._th.join(timeout=2 * self.check_s + 3)
        self.proc.stop(timeout)
