"""The cross-site stage as a unit: the real RoundLoop and CrossSite over the fake
Grid of test_round_loop, whose sites answer the final-stage messages in process.
Two sites consent to share their local-only model, one does not."""
from __future__ import annotations

import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fl_client.policy import CROSS_BOUND
from fl_common import keys as K
from fl_common.tensors import flatten, from_record, to_record, unflatten
from fl_server.cross_site import GLOBAL_BEST, GLOBAL_FINAL, HELD_OUT, local_name
from fl_server.records import RunRecord

from tests.fl_server.test_round_loop import (NAMES, TARGETS, TEMPLATE, WEIGHTS, FakeGrid, FakeSite, make_loop,
                                             server_identity)  # noqa: F401

CONSENT = {"site-a": True, "site-b": True, "site-c": False}
CASES = 4


def score(weights: dict, target: float) -> float:
    """A site's 'Dice' of a model on its data: 1 at its own target, lower away from it."""
    return float(1.0 / (1.0 + np.abs(flatten(weights).astype(np.float64) - target).mean()))


def local_weights(site: str) -> dict:
    """Each site's local-only model: its own target everywhere (distinct per site)."""
    return unflatten(np.full(9, TARGETS[site] * 0.9, np.float32), TEMPLATE)


class ConsentSite(FakeSite):
    def _arrays(self, msg):
        return from_record(msg.content.array_records[K.REC_ARRAYS])

    def evaluate(self, msg, r):
        content = super().evaluate(msg, r)  # as the worker: the local-only model's metrics beside it
        m = dict(content.metric_records[K.REC_METRICS])
        content[K.REC_METRICS] = MetricRecord({**m, f"{K.LOCAL}dice_1": score(local_weights(self.name), self.target)})
        return content

    def reply(self, msg):
        if msg.metadata.message_type == K.query_type(K.LOCAL_MODEL) and not CONSENT[self.name]:
            from fl_client.policy import NO_CONSENT  # as the ClientApp shim refuses it
            return Message(Error(K.ERR_REFUSED, NO_CONSENT), reply_to=msg)
        return super().reply(msg)

    def query_local_model(self, msg, r):
        return RecordDict({K.REC_ARRAYS: to_record(local_weights(self.name)),
                           K.REC_INFO: self._info()})

    def evaluate_cross_site(self, msg, r):
        """The batched wire: model i in arrays.<i>, its answer in metrics.<i> / cases.<i>."""
        names = list(msg.content.config_records[K.REC_CONFIG][K.CROSS_MODELS])
        out = RecordDict({K.REC_INFO: self._info()})
        refused = {str(i): CROSS_BOUND for i, n in enumerate(names) if n in getattr(self, "refuse", ())}
        if refused:  # as the ClientApp answers the models its policy refuses inside a batch
            out[K.REC_REFUSED] = ConfigRecord(refused)
        for i in range(len(names)):
            if str(i) in refused:
                continue
            rec = msg.content.array_records[K.batch_record(K.REC_ARRAYS, i)]
            s = score(from_record(rec), self.target)
            out[K.batch_record(K.REC_METRICS, i)] = MetricRecord({"dice_1": s, K.NUM_EXAMPLES: float(CASES)})
            out[K.batch_record(K.REC_CASES, i)] = MetricRecord({"dice_1": [s] * CASES})
        return out


class Central:
    num_classes = 2

    def evaluate(self, weights):
        s = score(weights, 1.0)
        case = {"dice": {"1": s}, "hd95": {"1": 1.0}, "missed": []}  # as imaging_core's case_metrics
        return {"dice_1": s}, [{"case_id": "h1", **case}, {"case_id": "h2", **case}], {}


class RecordingGrid(FakeGrid):
    def __init__(self, sites):
        super().__init__(sites)
        self.arrays: list[tuple[str, int, dict]] = []  # (message type, node, arrays) of every model sent
        self.messages: list[tuple[str, int]] = []      # (message type, node) of every message

    def push_messages(self, messages):
        messages = list(messages)
        for m in messages:
            self.messages.append((m.metadata.message_type, m.metadata.dst_node_id))
            for rec in m.content.array_records.values():
                self.arrays.append((m.metadata.message_type, m.metadata.dst_node_id, from_record(rec)))
        return super().push_messages(messages)


def test_every_model_on_every_set_equals_evaluating_it_directly_and_a_withheld_model_never_travels(tmp_path):
    sites = {10 + i: ConsentSite(s, TARGETS[s], WEIGHTS[s]) for i, s in enumerate(NAMES)}
    grid = RecordingGrid(sites)
    loop = make_loop(tmp_path, grid, site_round={"local_epochs": 1, "local_baseline": True})
    loop.central = Central()
    loop.run()
    doc = json.loads((tmp_path / "cross_site.json").read_text())
    rec = RunRecord.open(tmp_path)
    assert rec.cross_site_consent == CONSENT and doc["failures"] == []
    final = loop.weights
    best = {k: v.numpy() for k, v in rec.load_model("best").items()}
    models = {GLOBAL_FINAL: final, GLOBAL_BEST: best, local_name("site-a"): local_weights("site-a"),
              local_name("site-b"): local_weights("site-b")}
    cells = {(r["model"], r["eval_set"]): r for r in rec.cross_site}
    for name, w in models.items():
        for site in NAMES:
            row = cells.pop((name, site))
            assert abs(row["dice_1"] - score(w, TARGETS[site])) < 1e-6
            assert row["cases"] == CASES and row["per_case"]["dice_1"] == [row["dice_1"]] * CASES
        held = cells.pop((name, HELD_OUT))
        assert abs(held["dice_1"] - score(w, 1.0)) < 1e-6 and held["cases"] == 2
        assert held["per_case"]["dice_1"] == [held["dice_1"]] * 2 and held["per_case"]["missed_1"] == [0.0, 0.0]
    # the non-consenting site: its local model on its own data only, from the final stage
    (own,) = [cells.pop(k) for k in list(cells) if k[0] == local_name("site-c")]
    assert own["eval_set"] == "site-c" and abs(own["dice_1"] - score(local_weights("site-c"), TARGETS["site-c"])) < 1e-6
    assert cells == {}
    # what the coordinator sent: the shared local models went to the sites, site-c's never
    sent = [a for _, _, a in grid.arrays if a]
    assert any(np.array_equal(flatten(a), flatten(local_weights("site-a"))) for a in sent)
    assert not any(np.array_equal(flatten(a), flatten(local_weights("site-c"))) for a in sent)
    # each distinct model once per site in the final stage
    cross = [(n, flatten(a).tobytes()) for t, n, a in grid.arrays if t == K.evaluate_type(K.CROSS_SITE)]
    assert len(cross) == len(set(cross)) == len(sites) * len({flatten(w).tobytes() for w in models.values()})
    # ... all of them in one message per site (a ClientApp start per message is the cost)
    per_site = [n for t, n in grid.messages if t == K.evaluate_type(K.CROSS_SITE)]
    assert sorted(per_site) == sorted(sites)


def test_a_failed_share_or_a_refused_evaluation_is_recorded_and_the_matrix_keeps_the_rest(tmp_path):
    sites = {10 + i: ConsentSite(s, TARGETS[s], WEIGHTS[s]) for i, s in enumerate(NAMES)}
    sites[10].fail[K.query_type(K.LOCAL_MODEL)] = "error"        # site-a's worker failed: not a refusal
    sites[11].fail[K.evaluate_type(K.CROSS_SITE)] = "error"      # site-b answers no cross-site evaluation
    loop = make_loop(tmp_path, RecordingGrid(sites), site_round={"local_epochs": 1, "local_baseline": True})
    loop.central = Central()
    loop.run()
    rec = RunRecord.open(tmp_path)
    assert rec.info["status"] == "completed"
    assert rec.cross_site_consent == {"site-a": False, "site-b": True, "site-c": False}
    doc = json.loads((tmp_path / "cross_site.json").read_text())
    failed = {(f["model"], f["site"]) for f in doc["failures"]}
    assert (local_name("site-a"), "site-a") in failed                      # the share that failed
    assert {m for m, s in failed if s == "site-b"} >= {GLOBAL_FINAL, local_name("site-b")}
    sets = {(r["model"], r["eval_set"]) for r in rec.cross_site}
    assert (local_name("site-b"), "site-c") in sets and (local_name("site-b"), "site-b") not in sets
    assert (local_name("site-a"), "site-a") in sets and not any(
        m == local_name("site-a") and e != "site-a" for m, e in sets)   # not shared: own data only


def test_a_model_refused_inside_a_sites_batch_is_recorded_and_the_sites_other_models_kept(tmp_path):
    sites = {10 + i: ConsentSite(s, TARGETS[s], WEIGHTS[s]) for i, s in enumerate(NAMES)}
    sites[12].refuse = {local_name("site-a")}  # site-c's bound: it evaluates the rest, not site-a's model
    loop = make_loop(tmp_path, RecordingGrid(sites), site_round={"local_epochs": 1, "local_baseline": True})
    loop.central = Central()
    loop.run()
    rec = RunRecord.open(tmp_path)
    doc = json.loads((tmp_path / "cross_site.json").read_text())
    assert [(f["model"], f["site"], f["error"]) for f in doc["failures"]] == [
        (local_name("site-a"), "site-c", CROSS_BOUND)]
    sets = {(r["model"], r["eval_set"]) for r in rec.cross_site}
    assert (local_name("site-a"), "site-c") not in sets
    assert {(GLOBAL_FINAL, "site-c"), (local_name("site-b"), "site-c"), (local_name("site-a"), "site-b")} <= sets
