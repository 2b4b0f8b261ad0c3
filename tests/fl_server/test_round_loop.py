"""The round loop as a unit: the real RoundLoop, PlainAggregation and
SecureAggregation over a fake of Flower's Grid (get_node_ids, push_messages,
pull_messages) whose sites answer in process with real flwr Message/RecordDict
objects, as the ClientApp does. Real run directories and checkpoints and the
real secure-aggregation protocol; no Flower processes, no torch model."""
from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_common.tensors import flatten, from_record, to_record
from fl_common import keys as K
from fl_server.aggregation import PlainAggregation
from fl_server.records import RunRecord
from fl_server.round_loop import RoundLoop, RoundSettings
from fl_server.secure import SecureAggregation, next_session
from fl_common.secagg.checks import received
from fl_server.strategy import ServerOptimizer

SUPERLINK_NODE_ID = 1  # the id the SuperLink answers from (flwr.common.constant)


class FakeSite:
    """A site's ClientApp: delta = rate * (target - w), weight = num_examples.

    ``fail``: {(stage, round) | stage: what happens instead of a reply}, where
    the value is "error" (the ClientApp raised), "late" (no reply before the
    timeout) or "vanish" (the node went away: the SuperLink answers with an error)."""

    def __init__(self, name: str, target: float, num_examples: float, rate: float = 0.5, secagg=None):
        self.name, self.target, self.num_examples, self.rate = name, target, num_examples, rate
        self.secagg = secagg  # callable(session) -> SiteSecAgg, or None
        self.fail: dict = {}
        self.errors: list[str] = []  # what this site's handlers raised (refusals)

    def delta(self, flat: np.ndarray) -> np.ndarray:
        return (self.rate * (self.target - flat)).astype(np.float32)

    def _what(self, stage: str, r: int):
        return self.fail.get((stage, r), self.fail.get(stage))

    def reply(self, msg: Message):
        kind = msg.metadata.message_type
        cfg = msg.content.config_records.get(K.REC_CONFIG)
        r = int(cfg[K.SERVER_ROUND]) if cfg is not None else 0
        what = self._what(kind, r)
        if what == "late":
            return None
        if what == "error":
            return Message(Error(code=0, reason=f"{self.name} ClientApp raised in {kind}"), reply_to=msg)
        if what == "vanish":
            m = Message(Error(code=0, reason="node went away (heartbeat)"), reply_to=msg)
            m.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
            return m
        try:
            content = getattr(self, kind.replace(".", "_"))(msg, r)
        except Exception as e:  # noqa: BLE001 - as Flower does for a ClientApp that raises
            self.errors.append(str(e))
            return Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=msg)
        return Message(content, reply_to=msg)

    def _info(self) -> ConfigRecord:
        return ConfigRecord({K.SITE: self.name})

    def _sec(self, msg):
        return msg.content.config_records.get(K.REC_SECAGG)

    def query_advertise(self, msg, r):
        payload = self.secagg(str(self._sec(msg)[K.SESSION])).advertise()
        return RecordDict({K.REC_SECAGG: ConfigRecord({K.SITE: self.name, K.PAYLOAD: payload})})

    def query_share(self, msg, r):
        sec = self._sec(msg)
        payload = self.secagg(str(sec[K.SESSION])).receive_roster_and_share(bytes(sec[K.PAYLOAD]))
        return RecordDict({K.REC_SECAGG: ConfigRecord({K.SITE: self.name, K.PAYLOAD: payload})})

    def train(self, msg, r):
        flat = flatten(from_record(msg.content.array_records[K.REC_ARRAYS]))
        d, sec = self.delta(flat), self._sec(msg)
        if sec is None:
            return RecordDict({K.REC_DELTA: ArrayRecord({K.FLAT: Array(d)}),
                               K.REC_METRICS: MetricRecord({"loss": 1.0, K.NUM_EXAMPLES: self.num_examples}),
                               K.REC_INFO: self._info()})
        # as client_app does: what it received, hashed by itself; counts only inside the mask
        arrays = from_record(msg.content.array_records[K.REC_ARRAYS])
        cfg = dict(msg.content.config_records[K.REC_CONFIG])
        got = received(arrays, cfg, str(cfg[K.RUN_ID]), r)
        up = self.secagg(str(sec[K.SESSION])).mask(r, d, self.num_examples, bytes(sec[K.PAYLOAD]),
                                                   received=got, counts={"patches": PATCHES})
        return RecordDict({K.REC_MASKED: ArrayRecord({K.VECTOR: Array(up.vector)}),
                           K.REC_SECAGG: ConfigRecord({K.PAYLOAD: up.payload}),
                           K.REC_METRICS: MetricRecord({"loss": 1.0}),
                           K.REC_INFO: self._info()})

    def evaluate(self, msg, r):
        content = RecordDict({K.REC_METRICS: MetricRecord({"global/dice": 0.5, K.NUM_EXAMPLES: self.num_examples}),
                              K.REC_INFO: self._info()})
        sec = self._sec(msg)
        if sec is not None:
            content[K.REC_SECAGG] = ConfigRecord(
                {K.PAYLOAD: self.secagg(str(sec[K.SESSION])).reveal(r, bytes(sec[K.PAYLOAD]))})
        return content


class FakeGrid:
    """Replies are computed at push time and handed out on the next pull."""

    def __init__(self, sites: dict[int, FakeSite]):
        self.sites = sites
        self.pending: dict[str, Message] = {}
        self.pushed: list[tuple[str, int, int]] = []  # (message type, node, round)
        self.crash_at: tuple[str, int] | None = None    # (type, round): the server process dies here

    def get_node_ids(self):
        return list(self.sites)

    def push_messages(self, messages):
        ids = []
        for m in messages:
            cfg = m.content.config_records.get(K.REC_CONFIG)
            r = int(cfg[K.SERVER_ROUND]) if cfg is not None else 0
            if self.crash_at == (m.metadata.message_type, r):
                raise KeyboardInterrupt("server killed")
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.pushed.append((m.metadata.message_type, m.metadata.dst_node_id, r))
            reply = self.sites[m.metadata.dst_node_id].reply(m)
            if reply is not None:
                self.pending[m.metadata.message_id] = reply
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        return [self.pending.pop(i) for i in list(ids) if i in self.pending]


def secagg_sites(root: Path, names: list[str], colluding_sites: int = 1):
    """Enrollment keys, the roster and a per-site SiteSecAgg factory (state on disk,
    rebuilt per message as the ClientApp does)."""
    from fl_client.secagg import SiteSecAgg
    from fl_common.crypto import pki as crypto
    keys = {s: crypto.generate_enrollment_key() for s in names}
    roster = {s: crypto.enrollment_public_openssh(k).decode() for s, k in keys.items()}

    def factory(site):
        return lambda session: SiteSecAgg(site, session, keys[site], roster,
                                          root / site / session.replace("/", "_"),
                                          colluding_sites=colluding_sites)
    return json.loads(json.dumps(roster)), factory


# ------------------------------------------------------------------ the tests
NAMES = ["site-a", "site-b", "site-c"]
TARGETS = {"site-a": 1.0, "site-b": -2.0, "site-c": 4.0}
WEIGHTS = {"site-a": 10.0, "site-b": 20.0, "site-c": 30.0}
PATCHES = 12  # each fake site's training patches (a count that must stay masked)
TEMPLATE = {"conv.weight": np.zeros((2, 3), np.float32), "conv.bias": np.zeros(3, np.float32)}


@pytest.fixture(autouse=True)
def server_identity():
    """What Flower's ServerApp runtime sets before main(): messages need it."""
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 42, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class Central:
    """A held-out 'evaluation': closer to 1.0 everywhere scores higher."""

    def evaluate(self, weights):
        flat = np.concatenate([v.reshape(-1) for v in weights.values()])
        return {"dice_fg_mean": float(-np.abs(flat - 1.0).mean())}, [], {}


def make_sites(secagg=None):
    return {10 + i: FakeSite(s, TARGETS[s], WEIGHTS[s], secagg=secagg and secagg(s)) for i, s in enumerate(NAMES)}


def make_loop(run_dir, grid, aggregation=None, optimizer=None, record=None, **settings):
    cfg = RoundSettings(**{"rounds": 2, "min_sites": 2, "train_timeout": 0.3, "eval_timeout": 0.3,
                           "connect_timeout": 1.0, "site_round": {"local_epochs": 1}, "lr": lambda r: 0.1 / r,
                           "best_metric": "dice_fg_mean", **settings})
    return RoundLoop(grid, record or RunRecord(run_dir), aggregation or PlainAggregation(),
                     optimizer or ServerOptimizer("fedavg"), TEMPLATE, cfg, central=Central(),
                     run_info={"federation": "fake"})


def expected_step(flat, sites):
    """FedAvg: w + the weighted mean of the given sites' deltas."""
    num = sum(WEIGHTS[s] * 0.5 * (TARGETS[s] - flat.astype(np.float64)) for s in sites)
    return flat + num / sum(WEIGHTS[s] for s in sites)


def test_all_sites_reply_the_model_moves_by_the_weighted_mean_delta_and_the_run_is_recorded(tmp_path):
    grid = FakeGrid(make_sites())
    loop = make_loop(tmp_path, grid)
    loop.run()
    w = np.zeros(9)
    for _ in range(2):
        w = expected_step(w, NAMES)
    np.testing.assert_allclose(loop.flat(), w, rtol=1e-6)
    rec = RunRecord(tmp_path)
    assert [r["round"] for r in rec.rounds] == [0, 1, 2] and rec.last_round == 2
    assert all(r["status"] == "ok" and r["sites_aggregated"] == 3 and r["n_failures"] == 0 for r in rec.rounds[1:])
    assert rec.rounds[1]["total_weight"] == 60.0 and rec.rounds[2]["lr"] == pytest.approx(0.05)
    assert rec.rounds[2]["central/dice_fg_mean"] > rec.rounds[0]["central/dice_fg_mean"]
    assert sorted(r["site"] for r in rec.sites if r["round"] == 1) == NAMES
    assert rec.sites[0]["train/num-examples"] > 0 and "val/global/dice" in rec.sites[0]
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "completed" and info["best_round"] == 2 and info["federation"] == "fake"
    assert info["secure_aggregation"] == {"mode": "off"} and info["site_round"] == {"local_epochs": 1}
    final = json.loads((tmp_path / "final_sites.json").read_text())
    assert sorted(r["site"] for r in final["sites"]) == NAMES and final["failures"] == []
    for f in ("global_best.pt", "global_final.pt", "checkpoints/round-0002.pt"):
        assert (tmp_path / f).is_file()
    # two stages a round to every site, then the final evaluation and the cross-site stage
    # (best == final here: one model; no local models are asked for without local_baseline)
    assert [(t, r) for t, _, r in grid.pushed[::3]] == [("train", 1), ("evaluate", 1), ("train", 2),
                                                       ("evaluate", 2), ("evaluate", 3),
                                                       ("evaluate.cross_site", 3)]


@pytest.mark.parametrize("how, why", [("error", "site-c ClientApp raised in train"),
                                      ("late", "no reply before the timeout")])
def test_a_failed_or_late_site_is_recorded_and_the_round_goes_on_with_the_others(tmp_path, how, why):
    sites = make_sites()
    sites[12].fail[("train", 2)] = how
    loop = make_loop(tmp_path, FakeGrid(sites))
    loop.run()
    row = RunRecord(tmp_path).rounds[2]
    assert row["status"] == "ok" and row["sites_aggregated"] == 2 and row["total_weight"] == 30.0
    assert row["failures"] == [{"site": "site-c", "stage": "train", "error": why}]
    w1 = expected_step(np.zeros(9), NAMES)
    np.testing.assert_allclose(loop.flat(), expected_step(w1, ["site-a", "site-b"]), rtol=1e-6)
    assert {r["site"] for r in RunRecord(tmp_path).sites if r["round"] == 2} == {"site-a", "site-b"}


def test_below_min_sites_the_round_fails_and_the_model_is_unchanged(tmp_path):
    sites = make_sites()
    sites[11].fail["evaluate"] = "error"
    sites[12].fail["train"] = "late"
    loop = make_loop(tmp_path, FakeGrid(sites), rounds=1, min_sites=3)
    loop.start()
    row = loop.run_round(1, loop.stage.nodes())
    assert row["status"] == "failed" and row["sites_aggregated"] == 0
    assert "2 sites returned updates, 3 required" in row["reason"]
    assert [(f["stage"], f["site"]) for f in row["failures"]] == [("train", "12"), ("evaluate", "site-b")]
    np.testing.assert_array_equal(loop.flat(), np.zeros(9, np.float32))
    assert "central/dice_fg_mean" not in row and RunRecord(tmp_path).last_round == 1


def test_an_error_the_superlink_sends_for_a_vanished_node_is_that_nodes_failure(tmp_path):
    sites = make_sites()
    sites[12].fail[("train", 2)] = "vanish"
    loop = make_loop(tmp_path, FakeGrid(sites))
    loop.run()
    row = RunRecord(tmp_path).rounds[2]
    assert row["status"] == "ok" and row["sites_aggregated"] == 2
    assert row["failures"] == [{"site": "site-c", "stage": "train", "error": "node went away (heartbeat)"}]


def test_a_restarted_server_resumes_after_the_last_complete_round_with_its_state(tmp_path):
    """FedAdam keeps moments across rounds: a resume that lost them would end elsewhere."""
    whole = make_loop(tmp_path / "whole", FakeGrid(make_sites()), optimizer=ServerOptimizer("fedadam", eta=0.1),
                      rounds=3)
    whole.run()

    grid = FakeGrid(make_sites())
    grid.crash_at = ("train", 2)
    with pytest.raises(KeyboardInterrupt):
        make_loop(tmp_path / "cut", grid, optimizer=ServerOptimizer("fedadam", eta=0.1), rounds=3).run()
    assert RunRecord(tmp_path / "cut").last_round == 1
    grid2 = FakeGrid(make_sites())
    again = make_loop(tmp_path / "cut", grid2, optimizer=ServerOptimizer("fedadam", eta=0.1), rounds=3)
    again.run()
    assert sorted({r for t, _, r in grid2.pushed if t == "train"}) == [2, 3]
    np.testing.assert_array_equal(again.flat(), whole.flat())
    assert [r["round"] for r in RunRecord(tmp_path / "cut").rounds] == [0, 1, 2, 3]


def _secure_loop(tmp_path, run_dir, colluding_sites=1, sites=None, **settings):
    if sites is None:
        roster, factory = secagg_sites(tmp_path / "site-state", NAMES, colluding_sites)
        sites = roster, factory
    roster, factory = sites
    grid = FakeGrid(make_sites(secagg=factory))
    record = RunRecord(run_dir)
    agg = SecureAggregation(roster, lambda: next_session(record), setup_timeout=1.0,
                            colluding_sites=colluding_sites)
    return make_loop(run_dir, grid, agg, record=record, **settings), grid


def test_secure_aggregation_over_the_grid_unmasks_the_weighted_mean_and_survives_a_dropped_site(tmp_path):
    # no colluders declared: t = 2 of 3, so one site may drop
    loop, grid = _secure_loop(tmp_path, tmp_path / "run", colluding_sites=0)
    grid.sites[12].fail[("train", 2)] = "error"
    loop.run()
    w1 = expected_step(np.zeros(9), NAMES)
    w2 = expected_step(w1, ["site-a", "site-b"])
    tol = loop.aggregation.last.tolerance
    np.testing.assert_allclose(loop.flat(), w2, atol=4 * tol + 1e-6)
    rec = RunRecord(tmp_path / "run")
    r1, r2 = rec.rounds[1], rec.rounds[2]
    assert r1["status"] == "ok" and r1["sites_aggregated"] == 3 and r1["total_weight"] == pytest.approx(60.0)
    assert r2["status"] == "ok" and r2["sites_aggregated"] == 2 and r2["total_weight"] == pytest.approx(30.0)
    assert [f["site"] for f in r2["failures"]] == ["site-c"]
    assert loop.aggregation.last.dropped == ["site-c"]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["secure_aggregation"]["mode"] == "secagg" and info["secagg_sessions"] == 1
    # setup once (S1, S2), then nothing beyond T and E per round
    types = [t for t, _, _ in grid.pushed[::3]]
    assert types[:4] == ["query.advertise", "query.share", "train", "evaluate"]
    assert not any("delta" in k for r in rec.sites for k in r)
    # counts only as sums over the round's survivors, never per site
    assert r1["clipped"] == 0 and r1["sum_patches"] == 3 * PATCHES and r2["sum_patches"] == 2 * PATCHES
    assert not any(k.endswith(("clipped", "patches", K.NUM_EXAMPLES)) for r in rec.sites for k in r
                   if k.startswith(K.TRAIN))


def test_with_one_declared_colluder_three_sites_need_all_three_and_a_spent_round_ends_the_run(tmp_path):
    loop, grid = _secure_loop(tmp_path, tmp_path / "run", rounds=3)
    assert loop.aggregation.threshold == 3
    grid.sites[12].fail[("train", 2)] = "error"
    loop.run()
    rec = RunRecord(tmp_path / "run")
    assert [r["status"] for r in rec.rounds if r["round"]] == ["ok", "failed"]
    assert rec.info["status"] == "failed" and "never re-runs a round from the same model" in rec.info["reason"]
    assert 3 not in {r for t, _, r in grid.pushed if t == "train"}  # round 2's model is not sent again


def test_a_server_restart_mid_round_does_not_replay_it_and_the_sites_refuse_a_replay(tmp_path):
    """The server dies after the sites masked round 2. Restarted, it records
    the round as interrupted and ends the run; a server that replays the round
    anyway (a new session over a smaller survivor set, the difference attack)
    gets refusals from every site's ledger and no second sum."""
    sites = secagg_sites(tmp_path / "site-state", NAMES, 0)
    loop, grid = _secure_loop(tmp_path, tmp_path / "run", colluding_sites=0, sites=sites, rounds=3)
    grid.crash_at = ("evaluate", 2)
    with pytest.raises(KeyboardInterrupt):
        loop.run()
    assert RunRecord(tmp_path / "run").last_round == 1
    loop2, grid2 = _secure_loop(tmp_path, tmp_path / "run", colluding_sites=0, sites=sites, rounds=3)
    loop2.run()
    rec = RunRecord(tmp_path / "run")
    assert rec.rounds[-1]["round"] == 2 and rec.rounds[-1]["status"] == "interrupted"
    assert rec.info["status"] == "failed" and "round 2 interrupted" in rec.info["reason"]
    assert not [t for t, _, _ in grid2.pushed if t == "train"]
    # a replaying server: it forgets the round was in flight and drops site-c
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    info.pop("round_in_flight")
    (tmp_path / "run" / "run.json").write_text(json.dumps(info))
    loop3, grid3 = _secure_loop(tmp_path, tmp_path / "run", colluding_sites=0, sites=sites, rounds=3)
    grid3.sites[12].fail[("train", 2)] = "error"
    loop3.run()
    row = next(r for r in RunRecord(tmp_path / "run").rounds if r["round"] == 2)
    assert row["status"] == "failed"
    for node in (10, 11):
        assert any("already sent a masked update for run" in e for e in grid3.sites[node].errors)
    assert loop3.aggregation.last is None  # nothing was unmasked


class LateGrid(FakeGrid):
    """Node 12 connects only once ``joins()`` says so (it missed the start)."""

    def __init__(self, sites, joins):
        super().__init__(sites)
        self.joins = joins

    def get_node_ids(self):
        return [n for n in self.sites if n != 12 or self.joins(self)]


def test_a_site_that_connects_after_the_setup_is_keyed_in_for_the_next_round(tmp_path):
    # it joins once the first setup is done: round 1 keys everyone in a fresh session
    loop, grid = _late_secure_loop(tmp_path, lambda g: any(t == "query.share" for t, _, _ in g.pushed))
    loop.run()
    rec = RunRecord(tmp_path / "run2")
    assert [(r["sites_aggregated"], r["sum_patches"]) for r in rec.rounds[1:]] == [(3, 3 * PATCHES)] * 2
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["secagg_sessions"] == 2
    # the re-key happened once, not every round
    assert [t for t, _, _ in grid.pushed].count("query.advertise") == 2 + 3


def test_the_start_waits_a_grace_for_the_sites_not_yet_connected(tmp_path):
    t0 = time.monotonic()
    loop, grid = _late_secure_loop(tmp_path, lambda g: time.monotonic() - t0 > 0.5, join_grace=5.0,
                                   expected_sites=3)
    loop.run()
    rec = RunRecord(tmp_path / "run2")
    assert [(r["sites_aggregated"], r["sum_patches"]) for r in rec.rounds[1:]] == [(3, 3 * PATCHES)] * 2
    assert json.loads((tmp_path / "run2" / "run.json").read_text())["secagg_sessions"] == 1


def _late_secure_loop(tmp_path, joins, **settings):
    roster, factory = secagg_sites(tmp_path / "site-state", NAMES, 0)
    grid = LateGrid(make_sites(secagg=factory), joins)
    record = RunRecord(tmp_path / "run2")
    agg = SecureAggregation(roster, lambda: next_session(record), setup_timeout=1.0, colluding_sites=0)
    return make_loop(tmp_path / "run2", grid, agg, record=record, **settings), grid
