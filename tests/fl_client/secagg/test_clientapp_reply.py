"""What a masked train reply of the real ClientApp carries: the real handlers
(fl_client.client_app), a real SiteWorker on its 0600 socket training a tiny
model on generated cases, a real peer site and a real ServerSecAgg. The
weight, the clip count and the patch count leave only inside the mask."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_common import keys as K
from fl_common.tensors import from_record, to_record
from fl_common.crypto import pki
from fl_common.secagg.checks import received


@pytest.fixture
def server_identity():
    saved = TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 7, 42, 1
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@pytest.fixture(scope="module")
def worker(tiny_worker):
    return tiny_worker


def _msg(content: RecordDict, kind: str) -> Message:
    m = Message(content=content, dst_node_id=5, message_type=kind)
    m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return m


def test_a_masked_train_reply_carries_no_weight_clip_or_patch_count(worker, tmp_path, server_identity):
    from fl_client import client_app
    from fl_client.secagg import SiteSecAgg
    from fl_client.worker_server import serve
    from fl_server.secagg import ServerSecAgg
    from imaging_core.task import float_state

    me, peer = worker.name, "peer-site"
    keys = {me: pki.generate_enrollment_key(), peer: pki.generate_enrollment_key()}
    roster = {s: pki.enrollment_public_openssh(k).decode() for s, k in keys.items()}
    (tmp_path / "roster.json").write_text(json.dumps(roster))
    (tmp_path / "auth.key").write_bytes(pki.enrollment_private_openssh(keys[me]))
    sock = tmp_path / "w.sock"
    # a policy that lets the loss and even the patch count leave: under secure
    # aggregation the count still travels only inside the mask
    (tmp_path / "site.toml").write_text(f'[site]\nname = "{me}"\n[policy]\n'
                                        'metrics = ["dice_fg_mean", "train_loss", "patches"]\nmin_val_cases = 1\n')
    ctx = Context(run_id=42, node_id=5, state=RecordDict(), run_config={}, node_config={
        K.NODE_WORKER_SOCKET: str(sock), K.NODE_SITE_NAME: me, K.NODE_ROSTER: str(tmp_path / "roster.json"),
        K.NODE_STATE_DIR: str(tmp_path / "state"), K.NODE_AUTH_KEY: str(tmp_path / "auth.key"),
        K.NODE_AUDIT_DIR: str(tmp_path / "audit"), K.NODE_SITE_CONFIG: str(tmp_path / "site.toml"),
        K.NODE_ROSTER_FINGERPRINT: pki.roster_fingerprint(roster)})
    session = "run-x.s1"
    peer_sa = SiteSecAgg(peer, session, keys[peer], roster, tmp_path / "peer" / session)
    srv = ServerSecAgg(session, roster)  # 2 sites, one colluder declared: t = 2

    def secagg_rec(payload=None):
        cfg = {K.SESSION: session}
        if payload is not None:
            cfg[K.PAYLOAD] = payload
        return ConfigRecord(cfg)

    def ask(handler, kind, payload=None):
        reply = handler(_msg(RecordDict({K.REC_SECAGG: secagg_rec(payload)}), kind), ctx)
        return bytes(reply.content.config_records[K.REC_SECAGG][K.PAYLOAD])

    roster_msg = srv.collect_adverts({me: ask(client_app.advertise, "query.advertise"),
                                      peer: peer_sa.advertise()})
    srv.collect_share_bundles({me: ask(client_app.share, "query.share", roster_msg),
                               peer: peer_sa.receive_roster_and_share(roster_msg)})

    weights = {k: v.numpy() for k, v in float_state(worker.net).items()}
    cfg = {K.SERVER_ROUND: 1, K.RUN_ID: "run-x", K.LR: 0.01, "local_baseline": False}
    got = received(weights, cfg, "run-x", 1)
    reqs = srv.train_requests(1, received=got.digest)
    from flwr.app import Array, ArrayRecord
    content = RecordDict({K.REC_CONFIG: ConfigRecord(dict(cfg)),
                          K.REC_ARRAYS: to_record(weights),
                          K.REC_SECAGG: secagg_rec(reqs[me])})
    server = serve(worker, sock)
    try:
        reply = client_app.train(_msg(content, K.MSG_TRAIN), ctx)
    finally:
        server.stop(0)
    metrics = dict(reply.content.metric_records[K.REC_METRICS])
    assert "train_loss" in metrics
    for leak in (K.NUM_EXAMPLES, K.CLIPPED, "patches"):
        assert leak not in metrics, leak
    assert set(reply.content.array_records) == {K.REC_MASKED}
    audit = [json.loads(x) for x in (tmp_path / "audit" / K.AUDIT_FILE).read_text().splitlines()]
    assert set(audit[-1]["records"][K.REC_METRICS]["values"]) == set(metrics)
    # the server sums it (the site signed the digest the server computed) and
    # learns the counts only as sums
    vec = reply.content.array_records[K.REC_MASKED][K.VECTOR].numpy()
    payload = bytes(reply.content.config_records[K.REC_SECAGG][K.PAYLOAD])
    peer_up = peer_sa.mask(1, np.zeros(vec.size - 3, np.float32), 1.0, reqs[peer], received=got,
                           counts={"patches": 5})
    assert srv.collect_masked(1, {me: (vec, payload), peer: (peer_up.vector, peer_up.payload)}) == sorted([me, peer])
    rr = srv.reveal_requests(1)
    eval_content = RecordDict({K.REC_CONFIG: ConfigRecord(dict(cfg)),
                               K.REC_ARRAYS: to_record(weights),
                               K.REC_SECAGG: secagg_rec(rr[me])})
    server = serve(worker, sock)
    try:
        ev = client_app.evaluate(_msg(eval_content, K.MSG_EVALUATE), ctx)
    finally:
        server.stop(0)
    res = srv.unmask(1, {me: bytes(ev.content.config_records[K.REC_SECAGG][K.PAYLOAD]),
                         peer: peer_sa.reveal(1, rr[peer])})
    n_train = len(worker.data.cases("training"))
    assert res.total_weight == pytest.approx(n_train + 1.0, rel=1e-6)
    assert res.counts["patches"] > 5  # this site's patches + the peer's 5, summed
