"""Attacks of a deviating server on one site, through the real ClientApp shim
functions (real flwr Messages) in front of a real site worker on its Unix
socket; the site's [policy] comes from a real site.toml on disk."""
from __future__ import annotations

import json
import logging
import math
import os
import re
import stat

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fl_common import keys as K
from fl_common.tensors import from_record, to_record

pytestmark = [pytest.mark.timeout(120)]  # on main, epochs=10**9 would train for ever
NODE = 11
EPOCHS = {"local_epochs": 1, "local_baseline": False, K.LR: 1e-3}



@pytest.fixture(scope="module")
def served(tiny_worker):
    """A tiny hospital_a worker serving on a 0600 Unix socket, as `fedvox site` runs it."""
    from fl_client.worker_server import serve
    sock = tiny_worker.work_dir / "worker.sock"
    server = serve(tiny_worker, sock)
    yield {"worker": tiny_worker, "socket": sock}
    server.stop(0)


def _weights(worker) -> dict[str, np.ndarray]:
    from imaging_core.task import float_state
    return {k: v.numpy() for k, v in float_state(worker.net).items()}


class Site:
    """One site's files (site.toml with a [policy], state dir, audit dir) and its node config."""

    def __init__(self, tmp_path, served, policy: str = ""):
        self.dir = tmp_path
        self.toml = tmp_path / "site.toml"
        self.toml.write_text(f'[site]\nname = "hospital_a"\n\n[policy]\n{policy}\n')
        self.node_config = {K.NODE_SITE_NAME: "hospital_a", K.NODE_WORKER_SOCKET: str(served["socket"]),
                            K.NODE_STATE_DIR: str(tmp_path / "state"), K.NODE_AUDIT_DIR: str(tmp_path / "audit"),
                            K.NODE_SITE_CONFIG: str(self.toml)}

    def context(self) -> Context:
        return Context(run_id=42, node_id=NODE, node_config=dict(self.node_config), state=RecordDict(),
                       run_config={})

    def send(self, kind: str, rnd: int, weights: dict, run: str = "run-1", **cfg) -> Message:
        from fl_client import client_app
        content = RecordDict({K.REC_CONFIG: ConfigRecord({K.SERVER_ROUND: rnd, K.RUN_ID: run, **cfg}),
                              K.REC_ARRAYS: to_record(weights)})
        msg = Message(content=content, dst_node_id=NODE, message_type=kind)
        handler = client_app.train if kind == K.MSG_TRAIN else client_app.evaluate
        return handler(msg, self.context())

    def audit(self) -> list[dict]:
        p = self.dir / "audit" / K.AUDIT_FILE
        return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _refused(reply: Message, code: int = K.ERR_REFUSED) -> str:
    assert reply.has_error(), f"answered: {list(reply.content.keys()) if reply.has_content() else None}"
    assert not reply.has_content()  # an error reply carries nothing else
    assert reply.error.code == code
    return reply.error.reason


def _metric_names(reply: Message) -> set[str]:
    assert not reply.has_error(), reply.error
    return set(reply.content.metric_records[K.REC_METRICS])


# ----- (a) plaintext -------------------------------------------------------------
def test_a_plaintext_train_request_is_refused_and_nothing_unmasked_leaves(served, tmp_path, caplog):
    site = Site(tmp_path, served)  # the defaults: secure aggregation required
    with caplog.at_level(logging.INFO, logger="fedvox.worker"):
        reply = site.send(K.MSG_TRAIN, 1, _weights(served["worker"]), **EPOCHS)
    assert "secure aggregation" in _refused(reply)
    assert "train round 1" not in caplog.text  # never forwarded: the worker did not train
    (line,) = site.audit()  # what left: an error, no record at all
    assert line["records"] == {} and line["error"]["code"] == K.ERR_REFUSED
    logged = (tmp_path / "state" / "policy.log").read_text()
    assert "secure aggregation" in logged
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "policy.log").st_mode) == 0o600


# ----- (b) unbounded round config ------------------------------------------------
@pytest.mark.parametrize("bad, key", [({"local_epochs": 10 ** 9}, "local_epochs"), ({K.LR: -5.0}, "lr"),
                                      ({K.LR: 0.0}, "lr"), ({K.LR: math.nan}, "lr"),
                                      ({"prox_mu": 50.0}, "prox_mu"), ({"cases_per_batch": 10 ** 6}, "cases_per_batch"),
                                      ({"local_epochs": 2.5}, "local_epochs"), ({"debug_dump": True}, None)])
def test_out_of_bounds_round_config_is_refused(served, tmp_path, bad, key):
    site = Site(tmp_path, served, "require_secure_aggregation = false")  # the bounds alone decide
    reply = site.send(K.MSG_TRAIN, 1, _weights(served["worker"]), **{**EPOCHS, **bad})
    reason = _refused(reply)
    assert (key in reason) if key else ("key this site does not accept" in reason)


def test_rounds_beyond_the_site_bound_are_refused(served, tmp_path):
    site = Site(tmp_path, served, "require_secure_aggregation = false\nmax_rounds = 5")
    assert "round number" in _refused(site.send(K.MSG_TRAIN, 6, _weights(served["worker"]), **EPOCHS))
    assert "round number" in _refused(site.send(K.MSG_TRAIN, 0, _weights(served["worker"]), **EPOCHS))


# ----- (c) the evaluation oracle -------------------------------------------------
@pytest.fixture()
def trained(served, tmp_path):
    """A site that opted out of masking (so the train step can run here) and trained round 1 on w0."""
    site = Site(tmp_path, served, "require_secure_aggregation = false\nmin_val_cases = 1")
    w0 = _weights(served["worker"])
    reply = site.send(K.MSG_TRAIN, 1, w0, **EPOCHS)
    assert not reply.has_error(), reply.error
    return site, w0


def test_a_second_evaluate_in_a_round_is_refused(trained):
    site, w0 = trained
    assert _metric_names(site.send(K.MSG_EVALUATE, 1, w0, **EPOCHS))
    assert "no evaluation left" in _refused(site.send(K.MSG_EVALUATE, 1, w0, **EPOCHS))


def test_an_evaluate_of_other_weights_than_the_rounds_model_is_refused(trained):
    site, w0 = trained
    probe = {k: v + 0.5 for k, v in w0.items()}
    assert "model this round trained" in _refused(site.send(K.MSG_EVALUATE, 1, probe, **EPOCHS))
    # no train in this run, or a round not trained: nothing to evaluate
    assert "no evaluation left" in _refused(site.send(K.MSG_EVALUATE, 1, w0, run="run-2", **EPOCHS))


def test_the_final_evaluation_is_one_more_and_closes_the_run(trained):
    site, w0 = trained
    assert _metric_names(site.send(K.MSG_EVALUATE, 1, w0, **EPOCHS))
    final = {k: v + 0.25 for k, v in w0.items()}  # the model after the last round
    assert _metric_names(site.send(K.MSG_EVALUATE, 2, final, **EPOCHS))
    assert "final evaluation" in _refused(site.send(K.MSG_EVALUATE, 2, final, **EPOCHS))
    assert "final evaluation" in _refused(site.send(K.MSG_TRAIN, 2, final, **EPOCHS))
    # the state is on disk (each ClientApp is a new process), owner-only
    (state,) = (site.dir / "state" / "policy").glob("run-*.json")
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o600 and json.loads(state.read_text())["closed"]


def test_a_round_replayed_after_a_server_restart_is_answered_again(trained):
    site, w0 = trained
    assert _metric_names(site.send(K.MSG_EVALUATE, 1, w0, **EPOCHS))
    # the restarted server resends round 1 with the same model: same update, one more evaluation
    assert not site.send(K.MSG_TRAIN, 1, w0, **EPOCHS).has_error()
    assert _metric_names(site.send(K.MSG_EVALUATE, 1, w0, **EPOCHS))
    assert "no evaluation left" in _refused(site.send(K.MSG_EVALUATE, 1, w0, **EPOCHS))


def test_a_trained_round_cannot_be_retrained_with_another_model(trained):
    site, w0 = trained
    other = {k: v - 0.5 for k, v in w0.items()}
    assert "different model" in _refused(site.send(K.MSG_TRAIN, 1, other, **EPOCHS))


# ----- what leaves ---------------------------------------------------------------
ALLOWED = re.compile(r"(global/|local/)?(dice_fg_mean|dice_\d+|hd95_\d+)")


def test_only_allow_listed_aggregate_metrics_leave(trained):
    site, w0 = trained
    # the train reply of a site that opted out: delta + its weight, no loss, time or patch count
    train = site.send(K.MSG_TRAIN, 2, w0, **{**EPOCHS, "local_baseline": True})
    assert _metric_names(train) == {K.NUM_EXAMPLES}
    names = _metric_names(site.send(K.MSG_EVALUATE, 2, w0, **{**EPOCHS, "local_baseline": True}))
    assert {"global/dice_fg_mean", "local/dice_fg_mean"} <= names
    assert all(ALLOWED.fullmatch(n) for n in names), names  # no num_val, missed_*, num-examples, loss


def test_below_the_minimum_of_validation_cases_no_metric_leaves(served, tmp_path):
    site = Site(tmp_path, served, "require_secure_aggregation = false\nmin_val_cases = 50")
    w0 = _weights(served["worker"])
    assert not site.send(K.MSG_TRAIN, 1, w0, **EPOCHS).has_error()
    assert _metric_names(site.send(K.MSG_EVALUATE, 1, w0, **EPOCHS)) == set()


def test_a_per_case_metric_cannot_even_be_allowed(served, tmp_path):
    from fl_common.config import read_site_file
    from imaging_core.config_errors import ConfigError
    site = Site(tmp_path, served, 'metrics = ["dice_fg_mean", "per_case"]')
    with pytest.raises(ConfigError, match=r"site\.toml.*policy.*metrics"):
        read_site_file(site.toml)
    # the shim with that file: an error reply, not a crash, and nothing leaves
    reason = _refused(site.send(K.MSG_EVALUATE, 1, _weights(served["worker"]), **EPOCHS), K.ERR_INTERNAL)
    assert str(tmp_path) not in reason


# ----- (d) exception texts -------------------------------------------------------
def test_an_exception_inside_the_worker_yields_only_a_code_and_a_short_reason(served, tmp_path, caplog):
    site = Site(tmp_path, served, "require_secure_aggregation = false")
    bad = _weights(served["worker"])
    bad.pop(next(iter(bad)))  # the worker raises: weights do not match its model
    with caplog.at_level(logging.INFO, logger="fedvox.worker"):
        reason = _refused(site.send(K.MSG_TRAIN, 1, bad, **EPOCHS), K.ERR_WORKER)
    assert len(reason) < 80 and "match" not in reason and "Error" not in reason and "/" not in reason
    assert "do not match" in caplog.text  # the detail stays in the site's worker log
    assert "train round 1 failed" in (tmp_path / "state" / "policy.log").read_text()
    # the worker's own API says only which step failed
    from fl_client.worker_client import WorkerClient, WorkerError
    with WorkerClient(served["socket"]) as c, pytest.raises(WorkerError) as e:
        c.train("run", 1, bad, {"local_baseline": False})
    assert "train round 1 failed" in str(e.value) and "match" not in str(e.value)


def test_a_site_misconfiguration_reaches_the_server_without_its_path(served, tmp_path):
    site = Site(tmp_path, served, "require_secure_aggregation = false")
    site.node_config[K.NODE_WORKER_SOCKET] = str(tmp_path / "no-such-worker.sock")
    reason = _refused(site.send(K.MSG_TRAIN, 1, _weights(served["worker"]), **EPOCHS), K.ERR_WORKER)
    assert str(tmp_path) not in reason and "sock" not in reason


def test_a_table_other_than_the_sites_explicit_one_is_refused_before_the_worker(served, tmp_path, caplog):
    """The site's federation TOML has an explicit [preprocess] (4 mm): it wins; the server's
    other table is refused by the shim, with a fixed reason, and never reaches the worker."""
    from fl_client.policy import PREPROCESS_BAD, PREPROCESS_DIFFERS
    from imaging_core.config import PreprocessTable
    site = Site(tmp_path, served, "require_secure_aggregation = false")
    other = K.preprocess_wire(PreprocessTable(pixdim=[3.0, 3.0, 3.0]).model_dump())
    tiny = K.preprocess_wire(PreprocessTable(pixdim=[0.01, 0.01, 0.01]).model_dump())
    with caplog.at_level(logging.INFO, logger="fedvox.worker"):
        assert _refused(site.send(K.MSG_TRAIN, 1, _weights(served["worker"]), **EPOCHS,
                                  **{K.PREPROCESS: other})) == PREPROCESS_DIFFERS
        assert _refused(site.send(K.MSG_TRAIN, 1, _weights(served["worker"]), **EPOCHS,
                                  **{K.PREPROCESS: tiny})) == PREPROCESS_BAD
        assert "train round 1" not in caplog.text
        # the refusals recorded nothing: the run still trains with the site's own table
        own = K.preprocess_wire(served["worker"].preprocess)
        reply = site.send(K.MSG_TRAIN, 1, _weights(served["worker"]), **EPOCHS, **{K.PREPROCESS: own})
    assert not reply.has_error(), reply.error
