"""Run Flower's deployment engine for real: SuperLink, SuperNodes, `flwr` CLI.

Every process is started in its own process group with its output in a log
file, and carries two environment markers (FEDVOX_LAUNCH_GROUP/_PROC). Flower
starts helpers we do not own directly -- SuperLink starts `flower-superexec`
in a NEW session (so it escapes our process group), and SuperExec starts one
`flwr-serverapp`/`flwr-clientapp` per run/message -- and those inherit the
environment. Stopping therefore signals the process group, every descendant
found through /proc, and every process carrying the marker (which also
catches helpers already re-parented to init). A `ProcessGroup` stops all of
this on exit, exception, Ctrl-C, SIGTERM and interpreter exit.

Each Flower process gets its own $FLWR_HOME under its work directory: the
user's ~/.flwr is never read or written, and two SuperNodes never unpack the
same app into one directory. Flower's Control API, Fleet API and Runtime API
share one HTTPS port (`--port`) in 1.41.

How a run finds the app's code (dependency installation disabled): `flwr run`
zips the app directory into a FAB (*.py/*.toml/*.md/*.json..., never
test_*.py); the SuperLink and each SuperNode unpack it to
$FLWR_HOME/apps/<publisher>.<name>.<version>.<hash8>/ and flwr-serverapp /
flwr-clientapp put that directory first on sys.path, then import the
`module:attr` components. A pyproject-only app therefore imports its modules
from the venv (fedvox is installed there), and anything shipped in the FAB
would shadow an installed module of the same name. The `flwr run` CLI itself
checks with find_spec that the component modules exist before it submits.
Processes run with cwd = their work directory (not on sys.path).

Flower quirks handled here (measured on 1.41.0):
- SuperLink/SuperNode start `flower-superexec`, which starts `flwr-serverapp`/
  `flwr-clientapp`, all by bare name: the venv's bin directory must be on PATH.
- The SuperLink's own SuperExec and ServerApp talk to its Runtime API over TLS
  at 127.0.0.1:<port>, so the server certificate needs a loopback SAN.
- `flwr ... --format json` exits 0 even on failure: read "success" instead.
- A refused SuperNode (unknown key) exits with status 1 (it logs "Exit Code:
  305") and leaves its SuperExec behind for a moment; finished ClientApps stay
  zombies until their SuperExec exits (SuperExec never reaps them).
- `--node-config`/`--run-config` given a single *.toml path read it as a file:
  we pass TOML files, so paths with spaces or quotes need no shell quoting.
- Flower's update check and telemetry call the internet; both are turned off.
"""
from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w  # a dependency of flwr (its CLI writes config.toml with it)

GROUP_ENV = "FEDVOX_LAUNCH_GROUP"
PROC_ENV = "FEDVOX_LAUNCH_PROC"
BIN_DIR = Path(sys.executable).parent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Log lines that mark readiness (Flower 1.41).
SUPERLINK_READY = r"Uvicorn running on https?://"
SUPERNODE_CONNECTED = r"SuperNode ID: \d+"


class LaunchError(RuntimeError):
    pass


# ---- /proc helpers (Linux; no psutil) ----------------------------------------

def _proc_stat(pid: int) -> tuple[int, str] | None:
    """(ppid, state) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rfind(")") + 2:].split()  # comm may contain spaces/parens
    return int(rest[1]), rest[0]


def _alive(pid: int) -> bool:
    st = _proc_stat(pid)
    return st is not None and st[1] not in ("Z", "X")  # a zombie has exited


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _descendants(roots: Iterable[int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        st = _proc_stat(pid)
        if st is not None:
            children.setdefault(st[0], []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _tagged(key: str, value: str) -> set[int]:
    """Live processes whose environment variable ``key`` lists tag ``value``.

    The variable holds space-separated tags, so a launcher started by another
    launcher keeps the outer tag too and the outer sweep still finds everything.
    """
    prefix = f"{key}=".encode()
    tag = value.encode()
    me = os.getpid()
    out = set()
    for pid in _all_pids():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        for var in env.split(b"\0"):
            if var.startswith(prefix) and tag in var[len(prefix):].split():
                if _alive(pid):
                    out.add(pid)
                break
    return out


def _add_tag(env: dict, key: str, tag: str) -> None:
    env[key] = f"{env[key]} {tag}" if env.get(key) else tag


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (another program may still take it: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def flower_env(flwr_home: str | os.PathLike, extra: Mapping[str, str] | None = None) -> dict:
    """Environment for any Flower process: own FLWR_HOME, venv on PATH, no phoning home."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_HOME"] = str(Path(flwr_home).absolute())
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # never `uv sync` per run
    env["PYTHONUNBUFFERED"] = "1"  # logs reach the file while we wait on them
    env.update(extra or {})
    return env


# ---- Proc ----------------------------------------------------------------------

@dataclass(eq=False)
class Proc:
    """A started process (own process group, output in ``log_path``)."""
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen
    group_tag: str
    proc_tag: str
    started: float = field(default_factory=time.monotonic)
    address: str | None = None      # what clients connect to, where it serves one
    port: int | None = None
    flwr_home: Path | None = None
    workdir: Path | None = None
    log_start: int = 0              # log chars before this start (logs are appended to)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_text(self) -> str:
        try:
            return _ANSI.sub("", self.log_path.read_text(errors="replace"))
        except FileNotFoundError:
            return ""

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def wait_for_log(self, pattern: str, timeout: float, since: int | None = None,
                     poll: float = 0.1) -> re.Match:
        """Wait until ``pattern`` (regex) appears in the log after char ``since``
        (default: where this start's output begins).

        Raises LaunchError if the process exits first or ``timeout`` passes.
        """
        rx = re.compile(pattern)
        since = self.log_start if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(self.log_text(), since)
            if m:
                return m
            if not self.alive():
                m = rx.search(self.log_text(), since)  # last words after exit
                if m:
                    return m
                raise LaunchError(f"{self.name} exited with {self.returncode} before "
                                  f"/{pattern}/ appeared; log {self.log_path}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise LaunchError(f"{self.name}: /{pattern}/ not seen within {timeout:.0f} s; "
                                  f"log {self.log_path}:\n{self.tail()}")
            time.sleep(poll)

    def _targets(self) -> set[int]:
        # Descendants only while our pid is still ours (not reused after exit).
        pids = {self.pid} | _descendants([self.pid]) if self.alive() else set()
        return pids | _tagged(PROC_ENV, self.proc_tag)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the group and all helpers; SIGKILL what is left after ``timeout``."""
        stop_procs([self], timeout)
        return self.returncode


def stop_procs(procs: Iterable[Proc], timeout: float = 10.0, sweep_tags: Iterable[str] = ()) -> None:
    """Stop several Procs at once (in parallel, so the total wait is one timeout)."""
    procs = list(procs)
    sweep_tags = list(sweep_tags)

    def targets() -> set[int]:
        t: set[int] = set()
        for p in procs:
            t |= p._targets()
        for tag in sweep_tags:
            t |= _tagged(GROUP_ENV, tag)
        return t

    def signal_all(sig: int, pids: set[int]) -> None:
        for p in procs:
            if p.alive():
                try:
                    os.killpg(p.pid, sig)  # pgid == pid: started with start_new_session
                except (ProcessLookupError, PermissionError):
                    pass
        for pid in pids:
            _signal_pid(pid, sig)

    pids = targets()
    signal_all(signal.SIGTERM, pids)
    deadline = time.monotonic() + timeout
    last_scan = time.monotonic()
    while time.monotonic() < deadline:
        for p in procs:
            p.popen.poll()  # reap our direct children
        pids = {pid for pid in pids if _alive(pid)}
        if time.monotonic() - last_scan > 0.5:  # helpers may have spawned more
            new = targets() - pids
            if new:
                signal_all(signal.SIGTERM, new)
            pids |= new
            last_scan = time.monotonic()
        if not pids and not any(p.alive() for p in procs):
            break
        time.sleep(0.05)
    left = targets() | {pid for pid in pids if _alive(pid)}
    if left or any(p.alive() for p in procs):
        signal_all(signal.SIGKILL, left)
        end = time.monotonic() + 5.0
        while time.monotonic() < end and (any(_alive(x) for x in left)
                                          or any(p.alive() for p in procs)):
            for p in procs:
                p.popen.poll()
            time.sleep(0.05)
    for p in procs:
        try:
            p.popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass


# ---- ProcessGroup ----------------------------------------------------------------

# Strong references: a group nobody holds any more must still be stopped at exit.
_LIVE_GROUPS: "set[ProcessGroup]" = set()
_ATEXIT_LOCK = threading.Lock()
_ATEXIT_DONE = False


def _stop_live_groups() -> None:
    for g in list(_LIVE_GROUPS):
        try:
            g.stop_all(timeout=5.0)
        except Exception:  # noqa: BLE001 - interpreter is exiting; do the rest
            pass


class ProcessGroup:
    """Owns started processes; stops all of them (and their helpers) on exit.

    Use as a context manager. ``handle_signals`` turns SIGTERM/SIGHUP into
    SystemExit while inside the block, so the cleanup also runs then
    (Ctrl-C already raises KeyboardInterrupt). An atexit hook is the last net.
    """

    def __init__(self, name: str = "fedvox", handle_signals: bool = True):
        global _ATEXIT_DONE
        self.name = name
        self.tag = f"{name}-{os.getpid()}-{secrets.token_hex(6)}"
        self.procs: list[Proc] = []
        self.handle_signals = handle_signals
        self._old_handlers: dict[int, object] = {}
        self._lock = threading.Lock()
        with _ATEXIT_LOCK:
            if not _ATEXIT_DONE:
                atexit.register(_stop_live_groups)
                _ATEXIT_DONE = True

    def start(self, name: str, argv: list[str], log_path: str | os.PathLike, *,
              env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None) -> Proc:
        log_path = Path(log_path).absolute()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        proc_tag = f"{self.tag}-{len(self.procs)}-{secrets.token_hex(3)}"
        env = dict(os.environ if env is None else env)
        _add_tag(env, GROUP_ENV, self.tag)
        _add_tag(env, PROC_ENV, proc_tag)
        with open(log_path, "ab") as log:
            log.write(f"\n# fedvox: start {name}: {' '.join(map(str, argv))}\n".encode())
            log.flush()
            log_start = len(_read(log_path))  # waits look after this header (argv may match)
            popen = subprocess.Popen([str(a) for a in argv], stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=None if cwd is None else str(cwd),
                                     start_new_session=True)  # own process group
        proc = Proc(name=name, argv=[str(a) for a in argv], log_path=log_path, popen=popen,
                    group_tag=self.tag, proc_tag=proc_tag, log_start=log_start)
        with self._lock:
            self.procs.append(proc)
        with _ATEXIT_LOCK:
            _LIVE_GROUPS.add(self)
        return proc

    def leftovers(self) -> set[int]:
        """Live processes that still carry this group's marker."""
        return _tagged(GROUP_ENV, self.tag)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop everything started here and sweep helpers (bounded: ~timeout + 5 s)."""
        with self._lock:
            procs = list(self.procs)
        # A second Ctrl-C must not cut the cleanup short (it is bounded anyway).
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            stop_procs(procs, timeout, sweep_tags=[self.tag])
            with _ATEXIT_LOCK:
                _LIVE_GROUPS.discard(self)
        finally:
            if main:
                signal.signal(signal.SIGINT, old)

    def __enter__(self) -> "ProcessGroup":
        if self.handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                old = signal.getsignal(sig)
                if old in (signal.SIG_DFL, None):
                    self._old_handlers[sig] = old
                    signal.signal(sig, _raise_exit)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop_all()
        finally:
            for sig, old in self._old_handlers.items():
                signal.signal(sig, old)
            self._old_handlers.clear()


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


_DEFAULT_GROUP: ProcessGroup | None = None


def default_group() -> ProcessGroup:
    """The group used when a function gets no ``group=`` (stopped at exit)."""
    global _DEFAULT_GROUP
    if _DEFAULT_GROUP is None:
        _DEFAULT_GROUP = ProcessGroup("fedvox-default", handle_signals=False)
    return _DEFAULT_GROUP


# ---- SuperLink -------------------------------------------------------------------

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


# ---- flwr CLI ----------------------------------------------------------------------

def write_cli_config(flwr_home, name: str, address: str, root_cert=None, *,
                     insecure: bool = False, default: bool = True) -> Path:
    """Add/replace ``[superlink.NAME]`` in ``$FLWR_HOME/config.toml`` for `flwr` calls."""
    if (root_cert is None) == (not insecure):
        raise ValueError("give exactly one of root_cert or insecure=True")
    home = Path(flwr_home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    doc = tomllib.loads(path.read_text()) if path.is_file() else {}
    links = doc.setdefault("superlink", {})
    conn: dict = {"address": address}
    if insecure:
        conn["insecure"] = True
    else:
        # Flower requires an absolute path here.
        conn["root-certificates"] = str(Path(root_cert).absolute())
    links[name] = conn
    if default or "default" not in links:
        links["default"] = name
    tmp = path.with_name(f".config.toml.tmp-{secrets.token_hex(3)}")
    tmp.write_text(tomli_w.dumps(doc))
    os.replace(tmp, path)
    return path


def flwr_cli(args: list[str], flwr_home, timeout: float = 60.0, cwd=None,
             env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `flwr ARGS` with FLWR_HOME=flwr_home; the whole tree is killed on timeout."""
    argv = [str(BIN_DIR / "flwr"), *map(str, args)]
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=flower_env(flwr_home, env),
                         cwd=None if cwd is None else str(cwd), start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = p.communicate()
        raise LaunchError(f"`flwr {' '.join(map(str, args))}` timed out after {timeout:.0f} s\n"
                          f"{_ANSI.sub('', out + err)[-2000:]}") from None
    return subprocess.CompletedProcess(argv, p.returncode, _ANSI.sub("", out), _ANSI.sub("", err))


def _json_out(cp: subprocess.CompletedProcess) -> dict:
    """The JSON object `flwr ... --format json` printed on stdout.

    Its exit status is 0 even on failure: callers check "success".
    """
    text = cp.stdout
    i = text.find("{")
    try:
        if i < 0:
            raise ValueError("no JSON object")
        return json.JSONDecoder().raw_decode(text, i)[0]
    except ValueError:
        raise LaunchError(f"`{' '.join(cp.args[1:])}` printed no JSON (rc {cp.returncode}):\n"
                          f"{(cp.stdout + cp.stderr)[-2000:]}") from None


def register_sites(flwr_home, name: str, roster, timeout: float = 60.0) -> dict[str, int | None]:
    """Register each site's public key with the SuperLink (`flwr supernode register`).

    ``roster``: {site: OpenSSH public key line} or a roster.json path. Returns
    {site: node_id}, node_id None for a key already registered (a restarted
    SuperLink with a kept database), so calling this again is harmless.
    """
    if not isinstance(roster, Mapping):
        roster = json.loads(Path(roster).read_text())
    keydir = Path(flwr_home).absolute() / "roster_keys"
    keydir.mkdir(parents=True, exist_ok=True)
    out: dict[str, int | None] = {}
    deadline = time.monotonic() + timeout
    for site, pub in roster.items():
        f = keydir / f"{site}.pub"
        f.write_text(pub.strip() + "\n")
        left = deadline - time.monotonic()
        if left <= 0:
            raise LaunchError(f"registering sites took longer than {timeout:.0f} s")
        res = _json_out(flwr_cli(["supernode", "register", f, name, "--name", site,
                                  "--format", "json"], flwr_home, timeout=left))
        if res.get("success"):
            out[site] = int(res["node-id"])
        elif "already in use" in str(res.get("error-message", "")):
            out[site] = None
        else:
            raise LaunchError(f"registering {site} failed: {res.get('error-message', res)}")
    return out


def list_nodes(flwr_home, name: str, timeout: float = 30.0) -> list[dict]:
    """`flwr supernode list`: [{node-id, status ("registered"/"online"/...), ...}]."""
    res = _json_out(flwr_cli(["supernode", "list", name, "--format", "json"], flwr_home,
                             timeout=timeout))
    if not res.get("success"):
        raise LaunchError(f"listing SuperNodes failed: {res.get('error-message', res)}")
    return list(res.get("nodes", []))


def wait_for_nodes(flwr_home, name: str, n: int, timeout: float, poll: float = 2.0) -> list[dict]:
    """Wait until at least ``n`` SuperNodes are online; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        online = [x for x in list_nodes(flwr_home, name, timeout=max(5.0, left))
                  if x.get("status") == "online"]
        if len(online) >= n:
            return online
        if time.monotonic() + poll > deadline:
            raise LaunchError(f"only {len(online)} of {n} SuperNodes online after {timeout:.0f} s")
        time.sleep(poll)


# ---- SuperNode -------------------------------------------------------------------

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


# ---- runs ------------------------------------------------------------------------

@dataclass
class RunResult:
    run_id: int | None
    status: str  # "finished:completed|failed|stopped", "submitted", "timeout", "unknown"
    seconds: float
    log_path: Path | None = None
    details: str = ""
    returncode: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "finished:completed"


def run_status(flwr_home, name: str, run_id: int, timeout: float = 30.0) -> dict:
    """The run's row from `flwr ls --run-id` (status, status-details, elapsed, ...)."""
    res = _json_out(flwr_cli(["ls", name, "--run-id", run_id, "--format", "json"], flwr_home,
                             timeout=timeout))
    if not res.get("success") or not res.get("runs"):
        raise LaunchError(f"no status for run {run_id}: {res.get('error-message', res)}")
    return res["runs"][0]


def stop_run(flwr_home, name: str, run_id: int, timeout: float = 30.0) -> bool:
    res = _json_out(flwr_cli(["stop", run_id, name, "--format", "json"], flwr_home, timeout=timeout))
    return bool(res.get("success"))


def _write_run_config(flwr_home: Path, run_config: Mapping) -> Path:
    d = flwr_home / "run_configs"
    d.mkdir(parents=True, exist_ok=True)
    f = d / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.toml"
    f.write_text(tomli_w.dumps(dict(run_config)))
    return f


def flwr_run(app_dir, flwr_home, name: str, run_config: Mapping | None = None, stream: bool = True,
             timeout: float = 600.0, log_path=None,
             env: Mapping[str, str] | None = None) -> RunResult:
    """`flwr run APP NAME`: ship the app and start a run.

    ``run_config`` overrides keys of the app's [tool.flwr.app.config] (passed
    as a TOML file, so any string survives). With ``stream`` this waits for
    the run to end (logs go to ``log_path``) and returns its final status; on
    ``timeout`` the run is stopped and status is "timeout". Without
    ``stream`` it returns once the run is submitted (status "submitted"):
    follow it with ``wait_run``. The CLI checks locally that the app's
    component modules can be found (``env`` can extend its PYTHONPATH).
    """
    flwr_home = Path(flwr_home).absolute()
    app_dir = Path(app_dir).absolute()
    t0 = time.monotonic()
    args = ["run", app_dir, name]
    if run_config:
        args += ["--run-config", _write_run_config(flwr_home, run_config)]
    if not stream:
        cp = flwr_cli(args + ["--format", "json"], flwr_home, timeout=min(timeout, 120.0), env=env)
        res = _json_out(cp)
        if not res.get("success"):
            raise LaunchError(f"`flwr run` failed: {res.get('error-message', res)}")
        return RunResult(int(res["run-id"]), "submitted", time.monotonic() - t0,
                         returncode=cp.returncode)

    log_path = Path(log_path) if log_path else (
        flwr_home / "runs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = len(_read(log_path))  # an existing log is appended to: look only at our part
    started = re.compile(r"Successfully started run (\d+)")
    with open(log_path, "ab") as log:
        p = subprocess.Popen([str(BIN_DIR / "flwr"), *map(str, args), "--stream"],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                             env=flower_env(flwr_home, env), start_new_session=True)
    run_id = None
    rc = None
    try:
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            rc = p.poll()
            if run_id is None:
                m = started.search(_read(log_path), start)
                run_id = int(m.group(1)) if m else None
            if rc is not None:
                break
            time.sleep(0.2)
    finally:
        if p.poll() is None:  # timed out (or we are being interrupted): stop the stream
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=5)
    if run_id is None:
        m = started.search(_read(log_path), start)
        run_id = int(m.group(1)) if m else None
    if run_id is None:
        raise LaunchError(f"`flwr run` did not start a run (rc {rc}); log {log_path}:\n"
                          f"{_read(log_path)[start:][-2000:]}")
    if rc is None:
        try:
            stop_run(flwr_home, name, run_id)
        except LaunchError:
            pass
        return RunResult(run_id, "timeout", time.monotonic() - t0, log_path,
                         f"not finished after {timeout:.0f} s; stop requested", None)
    try:
        row = run_status(flwr_home, name, run_id)
    except LaunchError as e:  # e.g. the SuperLink went away mid-run
        return RunResult(run_id, "unknown", time.monotonic() - t0, log_path, str(e), rc)
    return RunResult(run_id, row.get("status", "?"), time.monotonic() - t0, log_path,
                     str(row.get("status-details", "")), rc)


def wait_run(flwr_home, name: str, run_id: int, timeout: float, poll: float = 3.0) -> RunResult:
    """Poll a run until it is finished (or ``timeout``: status "timeout")."""
    t0 = time.monotonic()
    while True:
        row = run_status(flwr_home, name, run_id)
        status = str(row.get("status", "?"))
        if status.startswith("finished"):
            return RunResult(run_id, status, time.monotonic() - t0,
                             details=str(row.get("status-details", "")))
        if time.monotonic() - t0 + poll > timeout:
            return RunResult(run_id, "timeout", time.monotonic() - t0, details=status)
        time.sleep(poll)


def _read(path: Path) -> str:
    try:
        return _ANSI.sub("", path.read_text(errors="replace"))
    except FileNotFoundError:
        return ""
