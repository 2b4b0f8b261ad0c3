"""The `flwr` CLI, driven from Python: its SuperLink connection config,
site registration, node listing, and runs (`flwr run`, `ls`, `stop`). Every
call has a bounded wait and its own FLWR_HOME. Flower's quirks (JSON output
exits 0 even on failure...): fl_common.flower."""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tomli_w  # a dependency of flwr (its CLI writes config.toml with it)

from fl_common.flower import BIN_DIR, flower_env
from fl_common.supervise import LaunchError, open_log, read_log, strip_ansi


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
                          f"{strip_ansi(out + err)[-2000:]}") from None
    return subprocess.CompletedProcess(argv, p.returncode, strip_ansi(out), strip_ansi(err))


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
    follow it with ``run_status``. The CLI checks locally that the app's
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
    start = len(read_log(log_path))  # an existing log is appended to: look only at our part
    started = re.compile(r"Successfully started run (\d+)")
    with open_log(log_path) as log:
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
                m = started.search(read_log(log_path), start)
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
        m = started.search(read_log(log_path), start)
        run_id = int(m.group(1)) if m else None
    if run_id is None:
        raise LaunchError(f"`flwr run` did not start a run (rc {rc}); log {log_path}:\n"
                          f"{read_log(log_path)[start:][-2000:]}")
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
