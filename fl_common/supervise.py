"""Process supervision: start a process in its own process group with its
output in a log file, wait on its log with a bound, and stop it together with
every helper it started, by PID and by an environment marker.

Every process carries two environment markers (FEDVOX_LAUNCH_GROUP/_PROC).
Programs we start may start helpers we do not own directly -- Flower's
SuperLink starts `flower-superexec` in a NEW session (so it escapes our process
group), and SuperExec starts one `flwr-serverapp`/`flwr-clientapp` per
run/message -- and those inherit the environment. Stopping therefore signals
the process group, every descendant found through /proc, and every process
carrying the marker (which also catches helpers already re-parented to init).
A `ProcessGroup` stops all of this on exit, exception, Ctrl-C, SIGTERM and
interpreter exit. Linux only (/proc; no psutil).
"""
from __future__ import annotations

import atexit
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOG_MODE = 0o640  # logs name sites, paths and errors: not for other local users
GROUP_ENV = "FEDVOX_LAUNCH_GROUP"
PROC_ENV = "FEDVOX_LAUNCH_PROC"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class LaunchError(RuntimeError):
    pass


def strip_ansi(text: str) -> str:
    """Text without terminal colour codes (Flower colours its logs)."""
    return _ANSI.sub("", text)


def open_log(path: str | os.PathLike):
    """``path`` opened for appending, created 0640 (and made so if it existed wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)
    os.fchmod(fd, LOG_MODE)
    return os.fdopen(fd, "ab")


def read_log(path: Path) -> str:
    """A log file's text so far, colour codes stripped ("" before it exists)."""
    try:
        return strip_ansi(path.read_text(errors="replace"))
    except FileNotFoundError:
        return ""


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


def pid_alive(pid: int) -> bool:
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


def tagged_pids(key: str, value: str) -> set[int]:
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
                if pid_alive(pid):
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
        return read_log(self.log_path)

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
        return pids | tagged_pids(PROC_ENV, self.proc_tag)

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
            t |= tagged_pids(GROUP_ENV, tag)
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
        pids = {pid for pid in pids if pid_alive(pid)}
        if time.monotonic() - last_scan > 0.5:  # helpers may have spawned more
            new = targets() - pids
            if new:
                signal_all(signal.SIGTERM, new)
            pids |= new
            last_scan = time.monotonic()
        if not pids and not any(p.alive() for p in procs):
            break
        time.sleep(0.05)
    left = targets() | {pid for pid in pids if pid_alive(pid)}
    if left or any(p.alive() for p in procs):
        signal_all(signal.SIGKILL, left)
        end = time.monotonic() + 5.0
        while time.monotonic() < end and (any(pid_alive(x) for x in left)
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
        self.stopping = False  # set by stop_all: supervisors must not restart anything then
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
        with open_log(log_path) as log:
            log.write(f"\n# fedvox: start {name}: {' '.join(map(str, argv))}\n".encode())
            log.flush()
            log_start = len(read_log(log_path))  # waits look after this header (argv may match)
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
        return tagged_pids(GROUP_ENV, self.tag)

    def stop_all(self, timeout: float = 10.0) -> None:
        """Stop everything started here and sweep helpers (bounded: ~timeout + 5 s)."""
        self.stopping = True
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
