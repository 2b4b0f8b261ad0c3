"""The plan's fingerprint query end to end in process: the real ClientApp
handlers (fl_client.client_app) of three sites, real enrollment keys and
secure-aggregation state on disk, the real SecureAggregation and Stage over a
Grid fake that hands each message to the site's handler. The server gets the
sum of the vectors (equal to the plaintext sum) and the sites' summary rows."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_common import keys as K
from fl_common.crypto import pki
from fl_common.fingerprint_codec import federation_vector
from fl_server.exchange import Stage
from fl_server.plan_stage import fingerprint_sum, run_fingerprint_stage
from fl_server.records import RunRecord
from fl_server.secure import SecureAggregation
from imaging_core.plan.aggregate import PlanError

HANDLERS = {"query.advertise": "advertise", "query.share": "share", "query.fingerprint": "fingerprint",
            "query.fingerprint_reveal": "fingerprint_reveal"}


@pytest.fixture(autouse=True)
def server_identity():
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 42, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def _data(d: Path, modality: str, n: int, seed: int, hu: bool = True) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True)
    items = []
    for i in range(n):
        if modality == "CT":
            x = (-1000 + rng.normal(0, 5, (16, 16, 10))).astype(np.float32)
            x[3:-3, 3:-3, 2:-2] = 40 + rng.normal(0, 10, (10, 10, 6))
            x += 0 if hu else 1024
        else:
            x = np.zeros((16, 16, 10), np.float32)
            x[3:-3, 3:-3, 2:-2] = 300 + rng.normal(0, 20, (10, 10, 6))
        lab = np.zeros((16, 16, 10), np.uint8)
        lab[5:9, 5:9, 3:6] = 1
        nib.save(nib.Nifti1Image(x, np.diag([2.0, 2.0, 3.0, 1.0])), d / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.diag([2.0, 2.0, 3.0, 1.0])), d / f"c{i}_seg.nii.gz")
        items.append({"image": f"c{i}.nii.gz", "label": f"c{i}_seg.nii.gz"})
    (d / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}, "training": items}))
    return d / "dataset.json"


class Sites:
    """Three sites' ClientApp contexts; each site's worker has written its fingerprint."""

    def __init__(self, root: Path, specs: dict):
        from fl_client.fingerprint import write_fingerprint
        self.names = list(specs)
        keys = {s: pki.generate_enrollment_key() for s in self.names}
        self.roster = {s: pki.enrollment_public_openssh(k).decode() for s, k in keys.items()}
        self.ctx, self.replies = {}, {}
        for node, (s, (mod, n, seed, hu)) in enumerate(specs.items(), start=10):
            d = root / s
            dl = _data(d / "data", mod, n, seed, hu)
            (d / "work").mkdir()
            self.replies[s] = write_fingerprint(dl, mod, s, d / "work" / K.FINGERPRINT_FILE)
            (d / "roster.json").write_text(json.dumps(self.roster))
            (d / "auth.key").write_bytes(pki.enrollment_private_openssh(keys[s]))
            (d / "site.toml").write_text(f'[site]\nname = "{s}"\n')
            self.ctx[node] = Context(run_id=42, node_id=node, state=RecordDict(), run_config={}, node_config={
                K.NODE_WORKER_SOCKET: str(d / "work" / "worker.sock"), K.NODE_SITE_NAME: s,
                K.NODE_ROSTER: str(d / "roster.json"), K.NODE_STATE_DIR: str(d / "state"),
                K.NODE_AUTH_KEY: str(d / "auth.key"), K.NODE_SITE_CONFIG: str(d / "site.toml"),
                K.NODE_ROSTER_FINGERPRINT: pki.roster_fingerprint(self.roster)})

    # Flower's Grid face: replies computed at push time, handed out on the next pull
    def get_node_ids(self):
        return list(self.ctx)

    def push_messages(self, messages):
        from fl_client import client_app
        self.pending = getattr(self, "pending", {})
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            handler = getattr(client_app, HANDLERS[m.metadata.message_type])
            self.pending[m.metadata.message_id] = handler(m, self.ctx[m.metadata.dst_node_id])
            ids.append(m.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        return [self.pending.pop(i) for i in list(ids) if i in self.pending]

    def secure(self):
        return SecureAggregation(self.roster, lambda: "run-1.plan")


SPECS = {"a": ("CT", 5, 0, True), "b": ("CT", 5, 1, True), "c": ("MR", 5, 2, True)}


def test_secure_fingerprint_sum_equals_plaintext_sum(tmp_path):
    sites = Sites(tmp_path, SPECS)
    stage = Stage(sites)
    total, replies = fingerprint_sum(stage, sites.get_node_ids(), "run-1", sites.secure(), timeout=30)
    plain = sum(federation_vector(r["modality"], r["vector"]) for r in sites.replies.values())
    assert np.array_equal(total, plain)
    # what the server got from each site beside the masked vector: summary and counts, no vector
    assert sorted(replies) == ["a", "b", "c"] and all(r["vector"] is None for r in replies.values())
    assert replies["c"]["summary"]["modality"] == "MR"
    # the sites' default policy keeps case counts: the row says only whether they are few
    assert replies["a"]["summary"]["cases"] is None and replies["a"]["summary"]["few_cases"] is False


def test_few_cases_flagged_without_the_count_leaving(tmp_path):
    sites = Sites(tmp_path, {**SPECS, "small": ("CT", 2, 5, True)})
    rec = RunRecord(tmp_path / "run")
    rec.start({"run_id": "run-1"})
    harm = run_fingerprint_stage(Stage(sites), sites.get_node_ids(), rec, sites.secure(), timeout=30)
    flag = {f["name"]: f for f in harm["flags"]}["too_few_cases"]
    assert flag["sites"] == ["small"] and "2" not in flag["detail"]


def test_stage_writes_table_and_plan_and_strict_refuses(tmp_path):
    sites = Sites(tmp_path, {**SPECS, "raw": ("CT", 5, 3, False)})
    rec = RunRecord(tmp_path / "run")
    rec.start({"run_id": "run-1"})
    harm = run_fingerprint_stage(Stage(sites), sites.get_node_ids(), rec, sites.secure(), timeout=30,
                                 memory_gb=1.0)
    assert {f["name"]: f["sites"] for f in harm["flags"]}["ct_not_hu"] == ["raw"]
    assert RunRecord(tmp_path / "run").harmonisation["rows"][0]["site"] == "a"  # rows by site name
    plan = RunRecord(tmp_path / "run").plan
    assert plan["preprocess"]["pixdim"] == [2.0, 2.0, 3.0] and plan["cases"] == 20
    sites2 = Sites(tmp_path / "again", {**SPECS, "raw": ("CT", 5, 3, False)})
    rec2 = RunRecord(tmp_path / "run2")
    rec2.start({"run_id": "run-2"})
    with pytest.raises(Exception, match="ct_not_hu"):
        run_fingerprint_stage(Stage(sites2), sites2.get_node_ids(), rec2, sites2.secure(), timeout=30, strict=True)


def test_bad_or_refused_reply_stops_with_one_line(tmp_path):
    sites = Sites(tmp_path, SPECS)
    bad = tmp_path / "b" / "work" / K.FINGERPRINT_FILE
    doc = json.loads(bad.read_text())
    bad.write_text(json.dumps({**doc, "vector": doc["vector"][:-3]}))
    with pytest.raises(PlanError) as e:
        fingerprint_sum(Stage(sites), sites.get_node_ids(), "run-1", sites.secure(), timeout=30)
    assert str(e.value).startswith("site b: no fingerprint reply: bad request") and "\n" not in str(e.value)
    # without secure aggregation the sites' default policy refuses to send the vector
    with pytest.raises(PlanError, match="only under secure aggregation"):
        fingerprint_sum(Stage(Sites(tmp_path / "plain", SPECS)), [10, 11, 12], "run-1", None, timeout=30)


def test_round_loop_runs_the_check_first_and_a_refusal_fails_the_run(tmp_path):
    from fl_server.aggregation import PlainAggregation
    from fl_server.round_loop import RoundLoop, RoundSettings
    from fl_server.strategy import ServerOptimizer
    sites = Sites(tmp_path, {**SPECS, "raw": ("CT", 5, 3, False)})
    rec = RunRecord(tmp_path / "run")
    loop = RoundLoop(sites, rec, PlainAggregation(), ServerOptimizer("fedavg"), {"w": np.zeros(3, np.float32)},
                     RoundSettings(rounds=1, min_sites=2, connect_timeout=5), stage=Stage(sites),
                     before_rounds=lambda st, nodes: run_fingerprint_stage(st, nodes, rec, sites.secure(),
                                                                           timeout=30, strict=True))
    with pytest.raises(ValueError, match="ct_not_hu"):
        loop.run()
    info = RunRecord.open(tmp_path / "run").info
    assert info["status"] == "failed" and info["reason"].startswith("harmonisation check failed under --strict")
    assert not RunRecord.open(tmp_path / "run").rounds     # no round ran


def test_a_second_runs_plan_stage_is_answered_and_sums_the_same(tmp_path):
    """The same sites, a second legitimate run (its own session): each site masks its
    fingerprint again (once per run id, within its daily bound) and the sum is the same.
    It used to fail: the secure-aggregation ledger held the empty model of run 1."""
    sites = Sites(tmp_path, SPECS)
    nodes = sites.get_node_ids()
    totals = [fingerprint_sum(Stage(sites), nodes, run, SecureAggregation(sites.roster, lambda r=run: f"{r}.s1"),
                              timeout=30)[0] for run in ("run-1", "run-2")]
    assert np.array_equal(totals[0], totals[1])
    for ctx in sites.ctx.values():  # each site counted two answers against its daily bound
        ledger = json.loads((Path(ctx.node_config[K.NODE_STATE_DIR]) / "policy" / "releases.json").read_text())
        assert len(ledger["fingerprints"]) == 2
