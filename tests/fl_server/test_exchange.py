"""send_and_gather's pull loop against a grid whose replies land over time
(the Flower engine runs it for real in test_federation.py)."""
import time
from types import SimpleNamespace

from fl_server.exchange import send_and_gather


class LaggingGrid:
    """Replies to message i land ``delays[i]`` seconds after the push; None never does."""

    def __init__(self, delays):
        self.delays, self.pulls = delays, 0

    def push_messages(self, messages):
        self.t0 = time.monotonic()
        return [f"m{i}" for i in range(len(messages))]

    def pull_messages(self, ids):
        self.pulls += 1
        now = time.monotonic() - self.t0
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=f"m{i}"), i=i)
                for i, d in enumerate(self.delays) if d is not None and d <= now and f"m{i}" in ids]


def test_replies_are_handed_over_as_they_land_and_the_stage_ends_with_the_last():
    grid, seen = LaggingGrid([0.3, 0.0, 0.15]), []
    t0 = time.monotonic()
    got = send_and_gather(grid, [object()] * 3, timeout=10, poll=0.05,
                          on_reply=lambda m: seen.append((m.i, time.monotonic() - t0)))
    took = time.monotonic() - t0
    assert [i for i, _ in seen] == [1, 2, 0] and len(got) == 3
    assert seen[0][1] < 0.1 and seen[1][1] < 0.3  # the first ones did not wait for the last
    assert 0.3 <= took < 1.0  # not a 3 s pull interval


def test_a_missing_reply_ends_the_stage_at_the_timeout():
    grid = LaggingGrid([0.0, None])
    t0 = time.monotonic()
    got = send_and_gather(grid, [object()] * 2, timeout=0.4, poll=0.05)
    assert [m.i for m in got] == [0]
    assert 0.4 <= time.monotonic() - t0 < 1.0
