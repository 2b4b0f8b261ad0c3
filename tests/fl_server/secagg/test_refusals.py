"""What a site refuses, end to end: tampered shares, forged or swapped keys, a
server lying about dropouts or showing different views, thresholds too low;
and what it keeps across restarts (fresh keys, reveal decisions, 0600 state)."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from fl_common.crypto import pki
from fl_common.crypto import secagg as crypto
from fl_common.secagg import (BadSignature, ProtocolError, Quantizer, RevealRefused, StateError,
                              TamperedShare, wire)
from fl_common.secagg.checks import advert_signed_bytes


# ------------------------------------------------------------------- tampering
def test_tampered_share_is_detected_and_named(federation):
    fed = federation(3)
    fed.setup()
    rng = np.random.default_rng(1)
    fed.train(1, fed.deltas(rng, fed.names, 50), dict.fromkeys(fed.names, 1.0))
    reqs = fed.server.reveal_requests(1)
    msg = wire.decode(wire.REVEAL_REQUEST, reqs["site-00"])
    sh = next(s for s in msg["shares"] if s["sender"] == "site-02")
    sh["ciphertext"] = sh["ciphertext"][:-1] + bytes([sh["ciphertext"][-1] ^ 0x01])
    with pytest.raises(TamperedShare, match="from site 'site-02' to site 'site-00'"):
        fed.sites["site-00"].reveal(1, wire.encode(wire.REVEAL_REQUEST, msg))
    # a share relabelled to another sender fails authentication too
    msg = wire.decode(wire.REVEAL_REQUEST, reqs["site-00"])
    a, b = (s for s in msg["shares"] if s["sender"] in ("site-01", "site-02"))
    a["ciphertext"], b["ciphertext"] = b["ciphertext"], a["ciphertext"]
    with pytest.raises(TamperedShare):
        fed.sites["site-00"].reveal(1, wire.encode(wire.REVEAL_REQUEST, msg))


def test_forged_advertisement_is_detected(federation):
    fed = federation(3)
    adverts = {s: fed.sites[s].advertise() for s in fed.names}
    # a forged advert at the server: left out of the setup, with the reason
    adv = wire.decode(wire.ADVERTISEMENT, adverts["site-02"])
    adv["advert"]["mask_public_key"] = crypto.x25519_keypair()[1]
    forged = wire.encode(wire.ADVERTISEMENT, adv)
    fed.server.collect_adverts({**adverts, "site-02": forged})
    assert "site-02" in fed.server.setup_rejected
    assert "signature does not verify" in fed.server.setup_rejected["site-02"]
    # a server that swaps a key in the roster: every site refuses
    roster = wire.decode(wire.ROSTER, fed.server.collect_adverts(adverts))
    roster["adverts"][2]["mask_public_key"] = crypto.x25519_keypair()[1]
    with pytest.raises(BadSignature, match="site 'site-02'"):
        fed.sites["site-00"].receive_roster_and_share(wire.encode(wire.ROSTER, roster))
    # ...and an advert signed by a key that is not the enrolled one
    impostor = pki.generate_enrollment_key()
    roster = wire.decode(wire.ROSTER, fed.server.collect_adverts(adverts))
    a = roster["adverts"][1]
    a["signature"] = pki.sign(impostor, advert_signed_bytes(
        fed.run_id, a["site_id"], a["epoch"], a["channel_public_key"], a["mask_public_key"]))
    with pytest.raises(BadSignature, match="site 'site-01'"):
        fed.sites["site-00"].receive_roster_and_share(wire.encode(wire.ROSTER, roster))


def test_swapped_key_in_a_round_view_is_detected(federation):
    fed = federation(3)
    fed.setup()
    req = wire.decode(wire.TRAIN_REQUEST, fed.train_request(1)["site-00"])
    req["participants"][1]["mask_public_key"] = crypto.x25519_keypair()[1]
    with pytest.raises(BadSignature, match="site 'site-01'"):
        fed.sites["site-00"].mask(1, np.zeros(4, np.float32), 1.0,
                                  wire.encode(wire.TRAIN_REQUEST, req), received=fed.received(1))


# ---------------------------------------------------------------- lying server
def _lying_request(fed, r, holder, survivors, b_owners, s_owners):
    """A RevealRequest built by a malicious server from what it holds."""
    srv, rnd = fed.server, fed.server._rounds[r]
    shares = [srv._self_shares[r][j][holder] for j in b_owners]
    shares += [srv._key_shares[(j, rnd.view[j]["epoch"])][holder] for j in s_owners]
    sigs = [{"site_id": s, "signature": rnd.survivors[s]["view_signature"]} for s in survivors]
    return wire.encode(wire.REVEAL_REQUEST, {"run_id": fed.run_id, "round": r,
                                             "survivors": survivors, "view_signatures": sigs,
                                             "shares": shares})


def test_server_lying_about_a_dropout_cannot_unmask_the_site(federation):
    fed = federation(5)  # threshold 3
    fed.setup()
    rng = np.random.default_rng(7)
    deltas, weights = fed.deltas(rng, fed.names, 20_000), dict.fromkeys(fed.names, 5.0)
    ups = fed.train(1, deltas, weights)
    victim, others = "site-00", fed.names[1:]
    # claim the (live) victim dropped: the others reveal its mask-key share
    revealed = {}
    for h in others:
        reply = fed.sites[h].reveal(1, _lying_request(fed, 1, h, others, others, [victim]))
        for sh in wire.decode(wire.REVEAL_REPLY, reply)["shares"]:
            if sh["owner"] == victim:
                revealed[sh["index"]] = sh["value"]
    # now ask for the victim's self-mask share too: every site refuses
    for h in others:
        with pytest.raises(RevealRefused, match="already revealed the mask-key share"):
            fed.sites[h].reveal(1, _lying_request(fed, 1, h, fed.names, fed.names, []))
    # both shares in one request: refused as well
    with pytest.raises(RevealRefused, match="self-mask share of site 'site-00'"):
        fed.sites["site-01"].reveal(1, _lying_request(fed, 1, "site-01", others,
                                                      [victim, *others], [victim]))
    # the victim itself will not be declared dropped
    with pytest.raises(RevealRefused, match="alive but the server lists it as dropped"):
        fed.sites[victim].reveal(1, _lying_request(fed, 1, victim, others, others, [victim]))

    # with the victim's mask key the server strips its pairwise masks...
    sk = crypto.shamir_combine(revealed.items(), 3)
    view = fed.server._rounds[1].view
    assert crypto.x25519_public(sk) == view[victim]["mask_public_key"]
    y = ups[victim].vector.copy()
    ks = crypto.Keystream(y.size)
    for j in others:
        k = crypto.pairwise_mask_key(sk, view[j]["mask_public_key"], fed.run_id, 1,
                                     victim, view[victim]["epoch"], j, view[j]["epoch"])
        ks.sub_into(y, k)  # the victim (smallest id) added +mask towards each j
    # ...but what is left, x + PRG(b), is still uniform noise
    x = Quantizer(4.0, 1000.0, 5).quantize(deltas[victim], 5.0).vector
    assert np.mean(y == x) < 1e-3
    assert fed.chi2_bytes_p(y) > 1e-6
    # control: the self mask is the only thing left (the attack math is right)
    seed = _collude_for_self_mask_seed(fed, 1, victim, others[:3])
    ks.sub_into(y, crypto.self_mask_key(seed, fed.run_id, 1, victim))
    assert np.array_equal(y, x)


def _collude_for_self_mask_seed(fed, r, owner, holders):
    """Test-only: decrypt the owner's b-shares with the holders' state files
    (what t colluding sites could do); never available to the server."""
    pts = []
    for h in holders:
        st = json.loads((fed.root / h / "secagg_state.json").read_text())
        sh = fed.server._self_shares[r][owner][h]
        key = crypto.channel_key(bytes.fromhex(st["channel_sk"]),
                                 bytes.fromhex(st["setup"]["channel_pks"][owner]), fed.run_id, h,
                                 owner)
        plain = crypto.decrypt(key, sh["nonce"], sh["ciphertext"],
                               crypto.share_ad(fed.run_id, sh["kind"], sh["tag"], owner, h), "x")
        pts.append((int.from_bytes(plain[:2], "big"), plain[2:]))
    return crypto.shamir_combine(pts, len(holders))


def test_reveal_needs_every_survivor_to_have_signed_the_same_view(federation):
    """A server showing sites different participant sets (to isolate one
    site's update) is caught at E: survivors' view signatures do not match."""
    fed = federation(5)
    fed.setup()
    srv = fed.server
    keys = {s: srv._keys[s] for s in fed.names}

    def req(sites):
        return wire.encode(wire.TRAIN_REQUEST, {"run_id": fed.run_id, "round": 1,
                                                "participants": [keys[s] for s in sites]})
    small, big = fed.names[:3], fed.names
    ups = {s: fed.sites[s].mask(1, np.ones(10, np.float32), 1.0, req(small), received=fed.received(1)) for s in small}
    ups.update({s: fed.sites[s].mask(1, np.ones(10, np.float32), 1.0, req(big), received=fed.received(1))
                for s in fed.names[3:]})
    sigs = {s: wire.decode(wire.MASKED_MANIFEST, u.payload)["view_signature"]
            for s, u in ups.items()}
    # ask site-03 (view: all five) to treat site-02 as dropped with survivors
    # {00, 01, 03, 04}: site-00 and site-01 signed another view -> refused
    body = {"run_id": fed.run_id, "round": 1, "survivors": ["site-00", "site-01", "site-03",
                                                            "site-04"],
            "view_signatures": [{"site_id": s, "signature": sigs[s]}
                                for s in ("site-00", "site-01", "site-03", "site-04")],
            "shares": []}
    with pytest.raises(BadSignature, match="survivor 'site-00'"):
        fed.sites["site-03"].reveal(1, wire.encode(wire.REVEAL_REQUEST, body))
    body["view_signatures"] = body["view_signatures"][2:]
    with pytest.raises(RevealRefused, match="no view signature from survivor 'site-00'"):
        fed.sites["site-03"].reveal(1, wire.encode(wire.REVEAL_REQUEST, body))


def test_site_refuses_small_survivor_sets_and_low_thresholds(federation):
    fed = federation(5)
    fed.setup()
    fed.train(1, {s: np.zeros(8, np.float32) for s in fed.names}, dict.fromkeys(fed.names, 1.0))
    two = ["site-00", "site-01"]
    with pytest.raises(RevealRefused, match="fewer than the threshold"):
        fed.sites["site-00"].reveal(1, _lying_request(fed, 1, "site-00", two, two, []))
    # a roster whose threshold is not a majority of the federation
    fed2 = federation(4)
    adverts = {s: fed2.sites[s].advertise() for s in fed2.names}
    roster = wire.decode(wire.ROSTER, fed2.server.collect_adverts(adverts))
    roster["threshold"] = 2
    with pytest.raises(ProtocolError, match="below 3"):
        fed2.sites["site-00"].receive_roster_and_share(wire.encode(wire.ROSTER, roster))


# ---------------------------------------------------------- keys and restarts
def test_fresh_mask_keys_every_round_and_one_mask_per_round(federation):
    fed = federation(3)
    fed.setup()
    rng = np.random.default_rng(8)
    views = []
    for r in (1, 2, 3):
        deltas, weights = fed.deltas(rng, fed.names, 16), fed.weights(rng, fed.names)
        reqs = fed.train_request(r)
        views.append({a["site_id"]: (a["epoch"], a["mask_public_key"])
                      for a in wire.decode(wire.TRAIN_REQUEST, reqs["site-00"])["participants"]})
        ups = {s: fed.sites[s].mask(r, deltas[s], weights[s], reqs[s], received=fed.received(r)) for s in fed.names}
        if r == 1:  # the same round twice, or a spent key, is refused
            with pytest.raises(ProtocolError, match="already masked round 1"):
                fed.sites["site-00"].mask(1, deltas["site-00"], 1.0, reqs["site-00"], received=fed.received(1))
            replay = wire.encode(wire.TRAIN_REQUEST, dict(
                wire.decode(wire.TRAIN_REQUEST, reqs["site-00"]), round=2))
            with pytest.raises(ProtocolError, match="spent or replaced"):
                fed.sites["site-00"].mask(2, deltas["site-00"], 1.0, replay, received=fed.received(2))
        fed.server.collect_masked(r, {s: (u.vector, u.payload) for s, u in ups.items()})
        fed.evaluate(r)
    for s in fed.names:
        epochs = [v[s][0] for v in views]
        pks = {v[s][1] for v in views}
        assert epochs == sorted(set(epochs)) and len(pks) == 3


def test_state_survives_a_restart_with_0600_permissions(federation):
    fed = federation(4)  # threshold 3
    fed.setup()
    rng = np.random.default_rng(9)
    deltas, weights = fed.deltas(rng, fed.names, 500), fed.weights(rng, fed.names)
    fed.train(1, deltas, weights)
    for s in fed.names:  # every ClientApp process is new at E
        fed.restart(s)
        path = fed.root / s / "secagg_state.json"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(fed.root / s).st_mode) == 0o700
        assert sorted(os.listdir(fed.root / s)) == ["secagg_state.json"]  # no temp files
    res = fed.evaluate(1)
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, fed.names)).max() <= res.tolerance
    # the next round runs on the keys persisted at T
    for s in fed.names:
        fed.restart(s)
    deltas = fed.deltas(rng, fed.names, 500)
    res = fed.round(2, deltas, weights)
    assert np.abs(res.mean - fed.plain_mean(deltas, weights, fed.names)).max() <= res.tolerance


def test_reveal_decisions_survive_a_restart(federation):
    fed = federation(4)
    fed.setup()
    fed.train(1, {s: np.zeros(8, np.float32) for s in fed.names}, dict.fromkeys(fed.names, 1.0))
    others = fed.names[1:]
    fed.sites["site-01"].reveal(1, _lying_request(fed, 1, "site-01", others, others, ["site-00"]))
    site = fed.restart("site-01")
    with pytest.raises(RevealRefused, match="site 'site-00'"):
        site.reveal(1, _lying_request(fed, 1, "site-01", fed.names, fed.names, []))


def test_state_of_another_run_is_refused(federation, tmp_path):
    fed = federation(2)
    fed.sites["site-00"].advertise()
    from fl_client.secagg import SiteSecAgg
    with pytest.raises(StateError, match="run 'run-1'"):
        SiteSecAgg("site-00", "run-2", fed.keys["site-00"], fed.roster, tmp_path / "site-00")
    with pytest.raises(ProtocolError, match="does not match the roster"):
        SiteSecAgg("site-00", "run-1", fed.keys["site-01"], fed.roster, tmp_path / "x")


