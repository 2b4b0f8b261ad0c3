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


class StuckUploadGrid:
    """Site 1's reply is listed at once but its objects never come (its link died
    halfway through the upload); site 2's reply lands 0.2 s later. The objects are
    pulled with Flower's own pull_objects, patched as the ServerApp patches the Grid's."""

    def __init__(self):
        from flwr.supercore.inflatable.inflatable_utils import pull_objects
        from fl_common.flower import sooner_object_pulls
        self.mod = SimpleNamespace(__name__="grid", pull_objects=pull_objects)
        sooner_object_pulls(self.mod)
        self.listed = False

    def push_messages(self, messages):
        self.t0 = time.monotonic()
        return ["m1", "m2"]

    def pull_messages(self, ids):
        from flwr.supercore.inflatable.inflatable_utils import ObjectPullError, ObjectUnavailableError

        def never(object_id):
            raise ObjectUnavailableError(object_id)
        out = []
        if "m1" in ids and not self.listed:  # the SuperLink hands a reply out once
            self.listed = True
            try:
                self.mod.pull_objects(["ab" * 32], pull_object_fn=never)
            except ObjectPullError as e:  # as Flower's Grid does: an error reply from its own node
                out.append(_reply("m1", src=0, error=str(e)))
        if "m2" in ids and time.monotonic() - self.t0 >= 0.2:
            out.append(_reply("m2", src=2))
        return out


def _reply(to: str, src: int, error: str | None = None):
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to, src_node_id=src),
                           has_error=lambda: error is not None, error=SimpleNamespace(reason=error))


def _message(node: int):
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node))


def test_a_reply_whose_upload_died_costs_the_stage_its_timeout_not_the_others_their_replies():
    from fl_server.exchange import Stage
    t0 = time.monotonic()
    ok, failed = Stage(StuckUploadGrid(), poll=0.05).send([_message(1), _message(2)], timeout=1.0)
    took = time.monotonic() - t0
    assert 1.0 <= took < 3.0, took  # Flower alone waits for the push session's 180 s expiry
    assert list(ok) == [2]  # landed while the stuck pull blocked: taken by the last pull
    assert [f["node"] for f in failed] == [1] and "Failed to pull object" in failed[0]["error"]


def test_an_error_flower_made_is_blamed_on_the_node_it_answers_and_no_other():
    from fl_server.exchange import Stage

    class Grid:
        def push_messages(self, messages):
            return ["m1", "m2", "m3"]

        def pull_messages(self, ids):  # node 3 answers; the SuperLink answers for node 1; node 2 is silent
            return [_reply("m3", src=3), _reply("m1", src=0, error="Node Unavailable")]
    ok, failed = Stage(Grid(), poll=0.05).send([_message(1), _message(2), _message(3)], timeout=0.3)
    assert list(ok) == [3]
    assert {f["node"]: f["error"] for f in failed} == {1: "Node Unavailable", 2: "no reply before the timeout"}
