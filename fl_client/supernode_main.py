"""`flower-supernode` with a shorter idle poll: ``python -P -m
fl_client.supernode_main ARGS`` takes exactly flower-supernode's arguments.

Flower 1.41's SuperNode waits a literal ``time.sleep(3)`` after every empty
pull from the SuperLink and ``time.sleep(0.5)`` while it waits for a reply
to push (flwr/supernode/start_client_internal.py; no flag, no env var). With
fedvox's long-lived runner those waits, not compute, set what a message stage
costs (on average 1.5 s + 0.25 s per stage). And it learns of a message
before the coordinator has finished uploading the message's objects (the
model), then pulls them with Flower's default backoff of 1, 2, 4... s: measured
6-8 s of a 12 s train stage on sites_example. Rather than fork Flower, this
entry point gives that one module a ``time`` whose ``sleep`` shortens exactly
those two literal waits (every other call passes through unchanged) and a
``pull_objects`` that retries sooner (fl_common.flower.sooner_object_pulls).

A shorter idle poll means more PullMessages calls to the SuperLink: 1 / IDLE_POLL_S
per site per second while idle (authenticated, a few hundred bytes each).
tests/fl_client/test_flower_internals.py fails, naming this module, if a
Flower upgrade removes the waits or the ``time`` global this relies on. The
upstream fix drafted for Flower: read the idle interval from an environment
variable, as FLWR_SUPEREXEC_TASK_POLL_INTERVAL already does for the SuperExec.
"""
from __future__ import annotations

import sys
import time as _time

from fl_common.flower import sooner_object_pulls

IDLE_POLL_S = 0.1    # instead of 3 s between empty pulls
REPLY_POLL_S = 0.05  # instead of 0.5 s while the runner's reply is on its way (local)
# Flower's literal waits -> ours; any other duration is left alone.
SHORTER = {3: IDLE_POLL_S, 0.5: REPLY_POLL_S}


class _ShortWaits:
    """Stands in for the ``time`` module inside start_client_internal only."""

    def __init__(self, real, shorter: dict):
        self._real, self._shorter = real, dict(shorter)

    def sleep(self, seconds: float) -> None:
        self._real.sleep(self._shorter.get(seconds, seconds))

    def __getattr__(self, name):
        return getattr(self._real, name)


def patch(module=None, shorter: dict = SHORTER) -> None:
    """Give flwr.supernode.start_client_internal the shorter waits."""
    if module is None:
        import flwr.supernode.start_client_internal as module
    if getattr(module, "time", None) is not _time and not isinstance(getattr(module, "time", None), _ShortWaits):
        raise RuntimeError("fl_client.supernode_main: flwr.supernode.start_client_internal no longer "
                           "imports `time` as a module global; the poll patch does not apply (Flower upgrade?)")
    sooner_object_pulls(module)
    module.time = _ShortWaits(_time, shorter)


def main() -> None:
    patch()
    from flwr.supernode.cli import flower_supernode
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
