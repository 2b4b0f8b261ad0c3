"""What every Flower deployment-engine process we start needs, on either side
(SuperLink, SuperNode, the `flwr` CLI): its environment, and the facts about
Flower 1.41 that the launchers rely on.

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

Flower quirks handled here and in fl_server.superlink, fl_server.flwr_cli and
fl_client.supernode (measured on 1.41.0):
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
- A fedvox site does not let Flower start ClientApps: its SuperNode runs with
  `--isolation process` and fl_client.runner (one long-lived process, FAB
  checked, installed ClientApp only) takes the tasks. The SuperNode still
  waits a literal 3 s between empty pulls from the SuperLink (no knob in
  1.41): that, not process start, now bounds a message stage.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

BIN_DIR = Path(sys.executable).parent  # the venv's bin: Flower starts its helpers by bare name


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


# Flower pulls a message's objects (the model) with a 1 s first backoff, doubling to 20 s,
# and a peer often asks before the sender has finished uploading them: measured 1-1.5 s of
# each stage at the coordinator and 6-8 s at a site. fedvox's processes retry sooner.
OBJECT_BACKOFF_S, OBJECT_BACKOFF_CAP_S = 0.02, 0.5
# Past a pull deadline (objects_due_by) one more try still gets this long: a reply whose
# objects are all there costs one request, whatever the clock says.
OBJECT_GRACE_S = 1.0
_due = threading.local()


@contextmanager
def objects_due_by(deadline: float):
    """Within this block, a patched pull_objects (sooner_object_pulls) gives up at
    ``deadline`` (time.monotonic()) instead of Flower's 500 tries. Why: Flower's Grid
    pulls the replies of one PullMessages call one after the other, and a site whose
    link dies halfway through its upload leaves a reply whose objects never come: the
    Grid waited on it until the SuperLink's 180 s push-session expiry, past the stage's
    timeout, while the other sites' complete replies queued behind it (measured in
    tests/fl_server/test_multihost.py, where the round then failed)."""
    before = getattr(_due, "deadline", None)
    _due.deadline = float(deadline)
    try:
        yield
    finally:
        _due.deadline = before


def sooner_object_pulls(module) -> None:
    """Give ``module`` (one that imported flwr's inflatable_utils.pull_objects by name) a
    pull_objects that retries from OBJECT_BACKOFF_S unless its caller says otherwise,
    and stops at the deadline of an enclosing objects_due_by."""
    pull_objects = getattr(module, "pull_objects", None)
    if not callable(pull_objects):
        raise RuntimeError(f"{module.__name__} no longer imports `pull_objects`: the backoff patch "
                           "does not apply (Flower upgrade? see tests/fl_client/test_flower_internals.py)")
    if getattr(pull_objects, "fedvox_sooner", False):
        return

    def pull(*args, **kw):
        kw.setdefault("initial_backoff", OBJECT_BACKOFF_S)
        kw.setdefault("backoff_cap", OBJECT_BACKOFF_CAP_S)
        deadline = getattr(_due, "deadline", None)
        if deadline is not None and "max_time" not in kw:
            kw["max_time"] = max(deadline - time.monotonic(), OBJECT_GRACE_S)
            # the deadline governs, not a count: at the 0.5 s cap Flower's 500 tries end a
            # slow but live upload (a large update on a hospital link) after ~4 minutes
            kw.setdefault("max_tries_per_object", None)
        return pull_objects(*args, **kw)
    pull.fedvox_sooner = True
    module.pull_objects = pull
