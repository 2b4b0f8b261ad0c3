"""The final stage at one site, through the real ClientApp shim functions in front
of a real site worker on its Unix socket, with the [policy] of a real site.toml:
the local-only model leaves only with the site's consent, other models are
evaluated only after the final evaluation, once each and within the site's bound,
and their metrics equal evaluating the same model directly."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fl_common import keys as K
from fl_common.tensors import from_record, to_record

pytestmark = [pytest.mark.timeout(180)]
NODE = 11
ROUND = {"local_epochs": 1, "local_baseline": True, K.LR: 1e-3}
OPEN = "require_secure_aggregation = false\nmin_val_cases = 1\n"



@pytest.fixture(scope="module")
def served(tiny_worker):
    from fl_client.worker_server import serve
    sock = tiny_worker.work_dir / "worker.sock"
    server = serve(tiny_worker, sock)
    yield {"worker": tiny_worker, "socket": sock}
    server.stop(0)


def _weights(worker) -> dict[str, np.ndarray]:
    from imaging_core.task import float_state
    return {k: v.numpy() for k, v in float_state(worker.net).items()}


class Site:
    """One site's files and node config; every reply it gives is kept (the audit)."""

    def __init__(self, tmp_path, served, policy: str):
        self.dir = tmp_path
        toml = tmp_path / "site.toml"
        toml.write_text(f'[site]\nname = "hospital_a"\n\n[policy]\n{OPEN}{policy}\n')
        self.node_config = {K.NODE_SITE_NAME: "hospital_a", K.NODE_WORKER_SOCKET: str(served["socket"]),
                            K.NODE_STATE_DIR: str(tmp_path / "state"), K.NODE_AUDIT_DIR: str(tmp_path / "audit"),
                            K.NODE_SITE_CONFIG: str(toml)}
        self.replies: list[Message] = []
        self.run = "run-1"  # the run id the coordinator names

    def send(self, kind: str, rnd: int, weights: dict | None, **cfg) -> Message:
        from fl_client import client_app
        content = RecordDict({K.REC_CONFIG: ConfigRecord({K.SERVER_ROUND: rnd, K.RUN_ID: self.run, **cfg})})
        if weights is not None:
            content[K.REC_ARRAYS] = to_record(weights)
        handler = {K.MSG_TRAIN: client_app.train, K.MSG_EVALUATE: client_app.evaluate,
                   K.evaluate_type(K.CROSS_SITE): client_app.cross_site,
                   K.query_type(K.LOCAL_MODEL): client_app.local_model}[kind]
        ctx = Context(run_id=42, node_id=NODE, node_config=dict(self.node_config), state=RecordDict(), run_config={})
        reply = handler(Message(content=content, dst_node_id=NODE, message_type=kind), ctx)
        self.replies.append(reply)
        return reply

    def local(self, rnd: int = 2):
        return self.send(K.query_type(K.LOCAL_MODEL), rnd, None, **ROUND)

    def cross(self, weights: dict, name: str = "global (best)", rnd: int = 2) -> Message:
        return self.send(K.evaluate_type(K.CROSS_SITE), rnd, weights, **ROUND, **{K.CROSS_MODEL: name})

    def cross_batch(self, models: dict[str, dict], rnd: int = 2) -> Message:
        """Several models in one message: names in cross-models, model i in arrays.<i>."""
        from fl_client import client_app
        kind = K.evaluate_type(K.CROSS_SITE)
        content = RecordDict({K.REC_CONFIG: ConfigRecord({K.SERVER_ROUND: rnd, K.RUN_ID: self.run, **ROUND,
                                                          K.CROSS_MODELS: list(models)})})
        for i, w in enumerate(models.values()):
            content[K.batch_record(K.REC_ARRAYS, i)] = to_record(w)
        ctx = Context(run_id=42, node_id=NODE, node_config=dict(self.node_config), state=RecordDict(), run_config={})
        reply = client_app.cross_site(Message(content=content, dst_node_id=NODE, message_type=kind), ctx)
        self.replies.append(reply)
        return reply

    def run_to_the_end(self, w0: dict) -> dict:
        """Round 1 (train with the local-only baseline, evaluate), then the final evaluation."""
        for kind, rnd in ((K.MSG_TRAIN, 1), (K.MSG_EVALUATE, 1), (K.MSG_EVALUATE, 2)):
            w = w0 if rnd == 1 else {k: v + 0.01 for k, v in w0.items()}
            r = self.send(kind, rnd, w, **ROUND)
            assert not r.has_error(), r.error
        return w

    def audit(self) -> list[dict]:
        return [json.loads(x) for x in (self.dir / "audit" / K.AUDIT_FILE).read_text().splitlines()]


def _refused(reply: Message) -> str:
    assert reply.has_error() and not reply.has_content()
    assert reply.error.code == K.ERR_REFUSED
    return reply.error.reason


def _arrays(reply: Message) -> list[np.ndarray]:
    return [a.numpy() for rec in reply.content.array_records.values() for a in rec.values()] \
        if reply.has_content() else []


def test_a_non_consenting_sites_local_model_never_leaves(served, tmp_path):
    site = Site(tmp_path, served, "")  # share_local_model defaults to false
    worker = served["worker"]
    site.run_to_the_end(_weights(worker))
    assert "does not share its local model" in _refused(site.local())
    ok = site.cross(_weights(worker))  # other models it still evaluates: metrics only come back
    assert not ok.has_error() and not _arrays(ok) and ok.content.metric_records[K.REC_METRICS]
    local = worker.local_model(1, "run-1")  # what the site holds (read here, in process, not through the shim)
    for reply in site.replies:
        for a in _arrays(reply):
            assert not any(a.shape == v.shape and np.array_equal(a, v) for v in local.values())
    # the audit of what left: the refused query carried no record at all
    lines = [x for x in site.audit() if x["message_type"] == K.query_type(K.LOCAL_MODEL)]
    assert lines and all(x["records"] == {} and x["error"]["code"] == K.ERR_REFUSED for x in lines)


def test_a_consenting_site_sends_its_local_model_once_and_only_after_the_final_evaluation(served, tmp_path):
    site = Site(tmp_path, served, "share_local_model = true")
    worker = served["worker"]
    w0 = _weights(worker)
    assert not site.send(K.MSG_TRAIN, 1, w0, **ROUND).has_error()
    assert "only after the run's final evaluation" in _refused(site.local())
    assert not site.send(K.MSG_EVALUATE, 1, w0, **ROUND).has_error()
    assert not site.send(K.MSG_EVALUATE, 2, {k: v + 0.01 for k, v in w0.items()}, **ROUND).has_error()
    reply = site.local()
    assert not reply.has_error(), reply.error
    got = from_record(reply.content.array_records[K.REC_ARRAYS])
    want = worker.local_model(1, "run-1")
    assert set(got) == set(want) and all(np.array_equal(got[k], want[k]) for k in want)
    assert not all(np.array_equal(got[k], w0[k]) for k in w0)  # trained: not the initial model
    assert "already sent" in _refused(site.local())


def _same_cases(got: dict, want: dict) -> None:
    """The same per-case values, each case's values together in one position (the
    order is the run's secret permutation, not the case order)."""
    def rows(d):
        keys = sorted(want)
        return sorted(tuple("nan" if math.isnan(float(x)) else round(float(x), 9) for x in r)
                      for r in zip(*[list(d[k]) for k in keys]))
    assert set(got) == set(want) and rows(got) == rows(want)


def _direct(worker, weights: dict):
    net = worker.task.build_net()
    worker._load(net, weights)
    return worker.task.evaluate(net, worker.data.cases("validation"))


def test_cross_site_metrics_equal_evaluating_the_model_directly_with_per_case_values(served, tmp_path):
    site = Site(tmp_path, served, 'metrics = ["dice_fg_mean", "dice_<c>", "hd95_<c>", "num_val"]\n'
                                  "cross_site_per_case = true")
    worker = served["worker"]
    site.run_to_the_end(_weights(worker))
    other = {k: v * 0.9 for k, v in worker.local_model(1, "run-1").items()}
    reply = site.cross(other)
    assert not reply.has_error(), reply.error
    got = dict(reply.content.metric_records[K.REC_METRICS])
    ev = _direct(worker, other)
    for k in ("dice_fg_mean", "dice_1", "dice_2"):
        assert got[k] == pytest.approx(ev.scores[k], abs=1e-9, nan_ok=True)
    assert got[K.NUM_EXAMPLES] == len(ev.per_case)
    cases = dict(reply.content.metric_records[K.REC_CASES])
    _same_cases(cases, {f"{m}_{c}": [x[m][c] for x in ev.per_case] for m in ("dice", "hd95") for c in ("1", "2")})
    assert not any(k.startswith("missed") for k in cases)  # only allow-listed names leave


def test_without_the_sites_opt_in_no_per_case_values_leave(served, tmp_path):
    site = Site(tmp_path, served, 'metrics = ["dice_fg_mean", "dice_<c>", "missed_<c>"]')  # counts, no opt-in
    worker = served["worker"]
    site.run_to_the_end(_weights(worker))
    reply = site.cross(_weights(worker))
    assert not reply.has_error() and K.REC_CASES not in reply.content.metric_records
    assert set(reply.content.metric_records[K.REC_METRICS]) <= {"dice_fg_mean", "dice_1", "dice_2",
                                                                "missed_1", "missed_2"}


def test_the_policy_bound_refuses_an_extra_model_a_repeat_and_an_early_request(served, tmp_path):
    site = Site(tmp_path, served, "max_cross_site_models = 1")
    worker = served["worker"]
    w0 = _weights(worker)
    assert not site.send(K.MSG_TRAIN, 1, w0, **ROUND).has_error()
    assert "only after the run's final evaluation" in _refused(site.cross(w0))  # no oracle during rounds
    assert not site.send(K.MSG_EVALUATE, 1, w0, **ROUND).has_error()
    assert not site.send(K.MSG_EVALUATE, 2, {k: v + 0.01 for k, v in w0.items()}, **ROUND).has_error()
    assert not site.cross(w0).has_error()
    assert "already evaluated" in _refused(site.cross(w0, name="another name"))
    assert "no cross-site evaluation left" in _refused(site.cross({k: v * 0.5 for k, v in w0.items()}))
    assert "cross-model" in _refused(site.cross(w0, name=""))
    assert "cross-model" in _refused(site.send(K.evaluate_type(K.CROSS_SITE), 2, w0, **ROUND))


def test_a_batch_is_each_model_admitted_on_its_own_with_metrics_equal_to_direct_evaluation(served, tmp_path):
    site = Site(tmp_path, served, 'metrics = ["dice_fg_mean", "dice_<c>", "num_val"]\n'
                                  "cross_site_per_case = true\nmax_cross_site_models = 2")
    worker = served["worker"]
    w0 = _weights(worker)
    assert "only after the run's final evaluation" in _refused(site.cross_batch({"global (best)": w0}))
    site.run_to_the_end(w0)
    a, b, c = w0, {k: v * 0.9 for k, v in w0.items()}, {k: v * 0.5 for k, v in w0.items()}
    # model 1 repeats model 0 (same hash), model 3 is over the bound of 2: both refused, 0 and 2 answered
    reply = site.cross_batch({"global (best)": a, "again": a, "local (x)": b, "one too many": c})
    assert not reply.has_error(), reply.error
    got = reply.content
    refused = dict(got.config_records[K.REC_REFUSED])
    assert set(refused) == {"1", "3"} and "already evaluated" in refused["1"] and "left" in refused["3"]
    for i, w in ((0, a), (2, b)):
        ev = _direct(worker, w)
        m = dict(got.metric_records[K.batch_record(K.REC_METRICS, i)])
        assert m["dice_1"] == pytest.approx(ev.scores["dice_1"], abs=1e-9, nan_ok=True)
        cases = dict(got.metric_records[K.batch_record(K.REC_CASES, i)])
        _same_cases(cases, {f"dice_{c}": [x["dice"][c] for x in ev.per_case] for c in ("1", "2")})
    assert K.batch_record(K.REC_METRICS, 1) not in got.metric_records
    assert K.batch_record(K.REC_METRICS, 3) not in got.metric_records
    # the bound is spent: a batch with nothing left to admit is one refusal, as a single request is
    assert "no cross-site evaluation left" in _refused(site.cross_batch({"late": {k: v * 0.3 for k, v in w0.items()}}))


# ----- attacker review (stop 22): the local-only model, per-case lists ----------------
def _hash(reply: Message) -> str:
    from fl_client.policy import model_hash
    return model_hash(from_record(reply.content.array_records[K.REC_ARRAYS]))


def test_fresh_run_ids_collect_no_local_model_twice_and_new_runs_are_bounded_per_day(served, tmp_path):
    """A coordinator that opens run after run to collect the consenting site's
    local-only model again: the same weights never leave twice (site-wide ledger,
    by content hash) and each new run (a new local training) counts against the
    site's max_runs_per_day, across restarts (a new Site on the same files)."""
    site = Site(tmp_path, served, "share_local_model = true\nmax_runs_per_day = 2")
    w0 = _weights(served["worker"])
    sent = []
    for run in ("run-1", "run-2"):
        site.run = run
        site.run_to_the_end(w0)  # the same model and round config: the same local training
        reply = site.local()
        if reply.has_error():
            assert "already sent" in _refused(reply)
        else:
            sent.append(_hash(reply))
    assert sent and len(sent) == len(set(sent))
    restarted = Site(tmp_path, served, "share_local_model = true\nmax_runs_per_day = 2")
    restarted.run = "run-3"
    assert "no new run left today" in _refused(restarted.send(K.MSG_TRAIN, 1, w0, **ROUND))
    assert "only after the run's final evaluation" in _refused(restarted.local())  # run-3 never trained


def test_only_the_final_local_model_of_the_runs_own_training_leaves(served, tmp_path):
    """A request that names an earlier round gets the run's final local-only model,
    never an intermediate one."""
    site = Site(tmp_path, served, "share_local_model = true")
    worker = served["worker"]
    w0 = _weights(worker)
    w1 = {k: v + 0.01 for k, v in w0.items()}
    for kind, rnd, w in ((K.MSG_TRAIN, 1, w0), (K.MSG_EVALUATE, 1, w0), (K.MSG_TRAIN, 2, w1),
                         (K.MSG_EVALUATE, 2, w1), (K.MSG_EVALUATE, 3, w1)):
        assert not site.send(kind, rnd, w, **ROUND).has_error()
    reply = site.local(rnd=1)
    assert not reply.has_error(), reply.error
    got = from_record(reply.content.array_records[K.REC_ARRAYS])
    final, first = worker.local_model(2, "run-1"), worker.local_model(1, "run-1")
    assert all(np.array_equal(got[k], final[k]) for k in final)
    assert not all(np.array_equal(got[k], first[k]) for k in first)
    # a file another run trained over is never sent as this run's
    with pytest.raises(RuntimeError, match="another run"):
        worker.local_model(2, "run-other")


def test_per_case_lists_leave_only_where_the_case_count_may(served, tmp_path):
    """Without num_val in the policy, a per-case list's length would be the case count."""
    site = Site(tmp_path, served, 'metrics = ["dice_fg_mean", "dice_<c>"]\ncross_site_per_case = true')
    worker = served["worker"]
    site.run_to_the_end(_weights(worker))
    reply = site.cross(_weights(worker))
    assert not reply.has_error(), reply.error
    assert K.REC_CASES not in reply.content.metric_records
    assert set(reply.content.metric_records[K.REC_METRICS]) == {"dice_fg_mean", "dice_1", "dice_2"}


def test_per_case_order_is_a_secret_permutation_per_run(tmp_path):
    """Positions do not name cases across runs: one order within a run (values pair up
    across models and metrics), another in the next run; the secret never leaves."""
    from fl_client import policy as P
    from fl_common.config import PolicyTable
    pol = PolicyTable(metrics=["dice_<c>", "hd95_<c>", "num_val"], cross_site_per_case=True)
    cases = {"dice_1": [float(i) for i in range(30)], "hd95_1": [10.0 * i for i in range(30)]}
    s1, s1_again = P.case_secret(tmp_path, "run-1"), P.case_secret(tmp_path, "run-1")
    s2 = P.case_secret(tmp_path, "run-2")
    assert s1 == s1_again and s1 != s2 and len(s1) == 64
    a, b, c = (P.outgoing_cases(pol, cases, s) for s in (s1, s1_again, s2))
    assert a == b and a["dice_1"] != c["dice_1"] and a["dice_1"] != cases["dice_1"]
    for out in (a, c):
        assert sorted(out["dice_1"]) == cases["dice_1"]
        assert all(h == d * 10 for d, h in zip(out["dice_1"], out["hd95_1"]))  # a case's values stay together
    assert P.outgoing_cases(PolicyTable(metrics=["dice_<c>"], cross_site_per_case=True), cases, s1) == {}
