"""Attacks by a deviating coordinator, performed with the real SiteSecAgg and
ServerSecAgg: different models or round configs to different sites (Pasquini et
al., CCS 2022), replaying a round in a new session, a colluding site plus a
server that lies about a dropout, and a threshold below what a site accepts.
Each attack worked before the view covered the received model/config, before
the site-wide ledger and before the threshold followed the declared colluders."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fl_common.crypto import secagg as crypto
from fl_common.secagg import (BadSignature, ProtocolError, Quantizer, ReplayRefused, RevealRefused,
                              SecAggError, wire)
from fl_common.secagg.checks import view_digest
from fl_server.secagg import ServerSecAgg

from .test_refusals import _lying_request


def _decrypt_for(fed, holder, owner, sh):
    """Test-only: what a colluding holder reads from its own state file."""
    st = json.loads((fed.root / holder / "secagg_state.json").read_text())
    key = crypto.channel_key(bytes.fromhex(st["channel_sk"]),
                             bytes.fromhex(st["setup"]["channel_pks"][owner]), fed.run_id,
                             holder, owner)
    plain = crypto.decrypt(key, sh["nonce"], sh["ciphertext"],
                           crypto.share_ad(fed.run_id, sh["kind"], sh["tag"], owner, holder), "x")
    return int.from_bytes(plain[:2], "big"), plain[2:]


# ---------------------------------------------------- different models per site
def test_sites_shown_different_round_configs_reveal_nothing(federation):
    """The server gives two of four sites lr 0 (their updates vanish) so the
    sum is the remaining site's update; each site signed the config it got,
    so at E every site finds a survivor that trained from another config."""
    fed = federation(4, colluding_sites=1)  # threshold 3
    fed.setup()
    srv = fed.server
    honest, zeroed = fed.received(1, lr=0.1), fed.received(1, lr=0.0)
    assert honest.model == zeroed.model and honest.digest != zeroed.digest
    reqs = srv.train_requests(1, received=honest.digest)
    rng = np.random.default_rng(3)
    deltas = fed.deltas(rng, fed.names, 500)
    got = {s: (zeroed if s in ("site-00", "site-01") else honest) for s in fed.names}
    ups = {s: fed.sites[s].mask(1, deltas[s], 10.0, reqs[s], received=got[s]) for s in fed.names}
    # an honest server already refuses to sum a reply signed over another config
    srv.collect_masked(1, {s: (u.vector, u.payload) for s, u in ups.items()})
    assert sorted(srv._rounds[1].survivors) == ["site-02", "site-03"]
    assert "another model or round config" in srv._rounds[1].rejected["site-00"]
    # a lying server sums them anyway (it skips its own check for each group)
    rnd = srv._rounds[1]
    rnd.received = zeroed.digest
    srv.collect_masked(1, {s: (ups[s].vector, ups[s].payload) for s in ("site-00", "site-01")})
    assert sorted(rnd.survivors) == fed.names
    reqs = srv.reveal_requests(1)
    for s in fed.names:  # nobody reveals anything
        with pytest.raises(BadSignature, match="another model or round config"):
            fed.sites[s].reveal(1, reqs[s])
        assert fed.sites[s].state["rounds"]["1"]["revealed"] == {}


def test_sites_shown_different_models_reveal_nothing(federation):
    fed = federation(3, colluding_sites=1)  # threshold 3
    fed.setup()
    a = fed.received(1)
    b = fed.received(1, model={"w": np.array([fed.model_id, 1, 2], np.float32)})
    reqs = fed.server.train_requests(1, received=a.digest)
    ups = {s: fed.sites[s].mask(1, np.ones(50, np.float32), 1.0, reqs[s],
                                received=b if s == "site-00" else a) for s in fed.names}
    rnd = fed.server._rounds[1]
    fed.server.collect_masked(1, {s: (u.vector, u.payload) for s, u in ups.items() if s != "site-00"})
    rnd.received = b.digest  # the lying server takes site-00's reply too
    fed.server.collect_masked(1, {"site-00": (ups["site-00"].vector, ups["site-00"].payload)})
    reqs = fed.server.reveal_requests(1)
    for s in fed.names:
        with pytest.raises(BadSignature, match="another model or round config"):
            fed.sites[s].reveal(1, reqs[s])



def test_sites_given_other_quantisation_reveal_nothing(federation):
    """The server gives two of three sites a huge clip range at setup: their
    updates quantise to 0 and the unmasked sum is the third site's update
    (found by an attacker review: clip_range/max_weight were in no signed
    bytes). Each site's view now covers the quantisation it was given, so at E
    every site finds a survivor that signed another one."""
    fed = federation(3, colluding_sites=1)  # threshold 3
    roster_msg = fed.server.collect_adverts({s: fed.sites[s].advertise() for s in fed.names})
    honest = wire.decode(wire.ROSTER, roster_msg)
    huge = {**honest["quant"], "clip_range": honest["quant"]["clip_range"] * 1e5}
    lying = wire.encode(wire.ROSTER, {**honest, "quant": huge})
    bundles = {s: fed.sites[s].receive_roster_and_share(roster_msg if s == "site-00" else lying)
               for s in fed.names}
    fed.server.collect_share_bundles(bundles)
    deltas = fed.deltas(np.random.default_rng(5), fed.names, 200)
    reqs = fed.train_request(1, fed.names)
    ups = {s: fed.sites[s].mask(1, deltas[s], 10.0, reqs[s], received=fed.received(1)) for s in fed.names}
    rnd = fed.server._rounds[1]
    fed.server.collect_masked(1, {"site-00": (ups["site-00"].vector, ups["site-00"].payload)})
    # the lying server checks the other two against the view it gave them, and sums all three
    rnd.digest = view_digest(fed.run_id, 1, 3, [(s, a["epoch"], a["mask_public_key"]) for s, a in rnd.view.items()],
                             **huge)
    fed.server.collect_masked(1, {s: (ups[s].vector, ups[s].payload) for s in ("site-01", "site-02")})
    assert sorted(rnd.survivors) == fed.names
    reqs = fed.server.reveal_requests(1)
    for s in fed.names:
        with pytest.raises(BadSignature, match="another set of participants"):
            fed.sites[s].reveal(1, reqs[s])
        assert fed.sites[s].state["rounds"]["1"]["revealed"] == {}

# ------------------------------------------------------------ replay, sessions
def _session(fed, session):
    """A new server session (as after a restart): fresh site processes and keys."""
    sites = {s: fed.make_site(s, session=session) for s in fed.names}
    srv = ServerSecAgg(session, fed.roster, colluding_sites=0)
    roster = srv.collect_adverts({s: sites[s].advertise() for s in fed.names})
    srv.collect_share_bundles({s: sites[s].receive_roster_and_share(roster) for s in fed.names})
    return srv, sites


def test_replaying_a_round_in_a_new_session_is_refused_and_the_difference_recovers_nothing(federation):
    """Session 1 unmasks round 1 over all three sites; the server opens
    session 2 for the same round and model over {site-00, site-01}: the
    difference of the two sums would be site-02's update. Training is
    deterministic per (seed, site, round), so the sites would send the same
    deltas again: their ledgers refuse, in any session and under any run name."""
    fed = federation(3)
    fed.setup()
    rng = np.random.default_rng(5)
    deltas, weights = fed.deltas(rng, fed.names, 2000), dict.fromkeys(fed.names, 7.0)
    first = fed.round(1, deltas, weights)
    assert first.survivors == fed.names

    srv, sites = _session(fed, "run-1.s2")
    pair = ["site-00", "site-01"]
    reqs = srv.train_requests(1, pair, received=fed.received(1).digest)
    for s in pair:
        with pytest.raises(ReplayRefused, match="already sent a masked update for run 'run-1' round 1"):
            sites[s].mask(1, deltas[s], weights[s], reqs[s], received=fed.received(1))
    # under another run name and round number, the same model is refused too
    assert srv._rounds[1].survivors == {}
    with pytest.raises(SecAggError):  # nothing masked: no second sum to subtract
        srv.reveal_requests(1)
    srv2, sites = _session(fed, "run-1b.s1")
    renamed = fed.received(1).__class__("run-1b", 2, fed.received(1).model, b"x" * 32)
    reqs = srv2.train_requests(2, pair, received=renamed.digest)
    for s in pair:
        with pytest.raises(ReplayRefused, match="already sent a masked update for this model"):
            sites[s].mask(2, deltas[s], weights[s], reqs[s], received=renamed)
    assert srv2._rounds[2].survivors == {}
    # an honest next round (a new model) goes on in a new session
    srv2, sites = _session(fed, "run-1.s3")
    reqs = srv2.train_requests(3, received=fed.received(3).digest)
    ups = {s: sites[s].mask(3, deltas[s], weights[s], reqs[s], received=fed.received(3)) for s in fed.names}
    assert sorted(srv2.collect_masked(3, {s: (u.vector, u.payload) for s, u in ups.items()})) == fed.names


def test_the_ledger_is_site_wide_0600_and_survives_restarts(federation):
    import os
    import stat
    fed = federation(2)
    fed.setup()
    fed.round(1, {s: np.zeros(4, np.float32) for s in fed.names}, dict.fromkeys(fed.names, 1.0))
    path = fed.root / "ledgers" / "secagg_ledger.site-00.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    entries = json.loads(path.read_text())
    assert list(entries["rounds"].values())[0]["session"] == "run-1"
    fed.restart("site-00")
    site = fed.make_site("site-00", session="run-1.s9")
    assert site.ledger.entries() == entries


# ------------------------------------------------- collusion and the threshold
def test_a_colluding_site_and_a_lying_server_cannot_unmask_a_site(federation):
    """n = 3 with one declared colluder: t = 3. The server claims the (live)
    victim dropped to get its mask-key shares, and asks for its self-mask
    shares too; the colluder hands over everything it holds. With t = 2 (the
    old majority rule) the victim's update came out exactly."""
    fed = federation(3, colluding_sites=1)
    assert fed.server.threshold == 3
    fed.setup()
    rng = np.random.default_rng(11)
    deltas = fed.deltas(rng, fed.names, 3000)
    ups = fed.train(1, deltas, dict.fromkeys(fed.names, 4.0))
    victim, colluder, honest = fed.names
    srv, rnd = fed.server, fed.server._rounds[1]
    s_shares, b_shares = {}, {}
    # the colluder's shares of both of the victim's secrets
    s_shares.update([_decrypt_for(fed, colluder, victim,
                                  srv._key_shares[(victim, rnd.view[victim]["epoch"])][colluder])])
    b_shares.update([_decrypt_for(fed, colluder, victim, srv._self_shares[1][victim][colluder])])
    # the honest site, told the victim dropped: refuses (2 survivors < t)
    with pytest.raises(RevealRefused, match="fewer than the threshold 3"):
        fed.sites[honest].reveal(1, _lying_request(fed, 1, honest, [colluder, honest],
                                                   [colluder, honest], [victim]))
    # the victim will not call itself dropped; asked honestly, the sites give b-shares
    for h in (victim, honest):
        reply = fed.sites[h].reveal(1, _lying_request(fed, 1, h, fed.names, fed.names, []))
        for sh in wire.decode(wire.REVEAL_REPLY, reply)["shares"]:
            if sh["owner"] == victim:
                b_shares[sh["index"]] = sh["value"]
    # now the honest site is asked for the victim's mask key: refused (it revealed b)
    with pytest.raises(RevealRefused):
        fed.sites[honest].reveal(1, _lying_request(fed, 1, honest, fed.names, [], [victim]))
    assert len(s_shares) < srv.threshold  # the victim's mask key stays secret
    # what the server can strip (self mask only) leaves the pairwise masks: uniform
    y = ups[victim].vector.copy()
    seed = crypto.shamir_combine(b_shares.items(), 3)
    crypto.Keystream(y.size).sub_into(y, crypto.self_mask_key(seed, fed.run_id, 1, victim))
    x = Quantizer(4.0, 1000.0, 3).quantize(deltas[victim], 4.0).vector
    assert np.mean(y == x) < 1e-3 and fed.chi2_bytes_p(y) > 1e-6


def test_a_threshold_below_the_sites_minimum_is_refused_at_setup(federation):
    """The server declares no colluders (t = 3 of 5); every site, which assumes
    one, needs 2t > 5 + 1, i.e. t >= 4, and refuses to share its key."""
    fed = federation(5, colluding_sites=1)
    srv = ServerSecAgg(fed.run_id, fed.roster, colluding_sites=0)
    assert srv.threshold == 3
    roster = srv.collect_adverts({s: fed.sites[s].advertise() for s in fed.names})
    for s in fed.names:
        with pytest.raises(ProtocolError, match="below 4, this site's minimum for 5 enrolled "
                                                "sites with 1 colluding"):
            fed.sites[s].receive_roster_and_share(roster)
        assert fed.sites[s].state["setup"] is None  # nothing shared
    # and a server cannot be built with it once it declares the colluder
    with pytest.raises(ProtocolError, match="2t > n \\+ n_C requires t >= 4"):
        ServerSecAgg(fed.run_id, fed.roster, threshold=3, colluding_sites=1)


def test_two_sites_are_allowed_and_say_what_they_reveal(federation, caplog):
    fed = federation(2, colluding_sites=1)
    with caplog.at_level("WARNING"):
        fed.setup()
    assert fed.server.warning and "learns the other's update" in fed.server.warning
    assert sum("learns the other's update" in r.getMessage() for r in caplog.records) >= 2


# ------------------------------------------------- nothing per site beside the mask
def test_weight_clip_and_patch_counts_ride_inside_the_mask(federation):
    fed = federation(3, clip_range=1.0)
    fed.setup()
    deltas = {s: np.zeros(64, np.float32) for s in fed.names}
    deltas["site-01"][:3] = 5.0
    reqs = fed.train_request(1)
    patches = {"site-00": 40, "site-01": 8, "site-02": 16}
    ups = {s: fed.sites[s].mask(1, deltas[s], 2.0, reqs[s], received=fed.received(1),
                                counts={"patches": patches[s]}) for s in fed.names}
    fed.server.collect_masked(1, {s: (u.vector, u.payload) for s, u in ups.items()})
    manifest = wire.decode(wire.MASKED_MANIFEST, ups["site-01"].payload)
    assert not any(k in manifest for k in ("weight", "clipped", "patches", "num_examples"))
    res = fed.evaluate(1)
    assert res.counts == {"patches": 64} and res.clipped == 3
    assert res.total_weight == pytest.approx(6.0)
    with pytest.raises(SecAggError, match="unknown masked counts"):
        Quantizer(1.0, 10.0, 3).quantize(np.zeros(2, np.float32), 1.0, counts={"cases": 3})
