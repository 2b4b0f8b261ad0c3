"""An in-process federation of SiteSecAgg objects (fl_client) and one
ServerSecAgg (fl_server): the protocol end to end, both sides real."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from fl_client.secagg import SiteSecAgg
from fl_common.crypto import pki as crypto
from fl_common.secagg.checks import received
from fl_server.secagg import ServerSecAgg

_KEYS: list = []


def enrollment_keys(n: int) -> list:
    # P-384 keygen is cheap, but reuse keys across tests anyway
    while len(_KEYS) < n:
        _KEYS.append(crypto.generate_enrollment_key())
    return _KEYS[:n]


class Federation:
    def __init__(self, root, n, threshold=None, clip_range=4.0, max_weight=1000.0,
                 run_id="run-1", colluding_sites=0):
        # colluding_sites=0 by default: the protocol tests predate the collusion
        # bound (t = floor(n/2)+1); the attack tests declare theirs
        self.root, self.run_id, self.colluding = root, run_id, colluding_sites
        # a model of its own per federation: sites in one tmp dir share a ledger
        self.model_id = float(np.random.default_rng().integers(1 << 30))
        self.names = [f"site-{i:02d}" for i in range(n)]
        self.keys = dict(zip(self.names, enrollment_keys(n)))
        self.roster = {s: crypto.enrollment_public_openssh(k).decode()
                       for s, k in self.keys.items()}
        self.sites = {s: self.make_site(s) for s in self.names}
        self.server = ServerSecAgg(run_id, self.roster, threshold, clip_range, max_weight,
                                   colluding_sites=colluding_sites)

    # ---- test data and checks shared by the protocol tests
    @staticmethod
    def deltas(rng, names, size, scale=0.3):
        return {s: rng.normal(0, scale, size).astype(np.float32) for s in names}

    @staticmethod
    def weights(rng, names, hi=1000.0):
        return {s: float(rng.uniform(1.0, hi)) for s in names}

    @staticmethod
    def plain_mean(deltas, weights, sites):
        """The plaintext weighted mean secure aggregation must reproduce."""
        num = sum(weights[s] * deltas[s].astype(np.float64) for s in sites)
        return num / sum(weights[s] for s in sites)

    @staticmethod
    def chi2_bytes_p(vec: np.ndarray) -> float:
        """p-value of a chi-square uniformity test over the vector's bytes."""
        counts = np.bincount(vec.view(np.uint8), minlength=256)
        return stats.chisquare(counts).pvalue

    def make_site(self, name, session=None):
        """A (re)started site process: state comes from its directory (one per
        session); the ledger is site-wide, in the parent directory."""
        session = session or self.run_id
        state = self.root / name if session == self.run_id else self.root / session / name
        return SiteSecAgg(name, session, self.keys[name], self.roster, state,
                          colluding_sites=self.colluding, ledger_dir=self.root / "ledgers")

    def received(self, r, lr=0.1, model=None):
        """What a site computes from round r's message (one model per round)."""
        model = {"w": np.array([self.model_id, r], np.float32)} if model is None else model
        return received(model, {"server-round": r, "lr": lr}, self.run_id, r)

    def train_request(self, r, participants=None):
        return self.server.train_requests(r, participants, received=self.received(r).digest)

    def restart(self, name):
        self.sites[name] = self.make_site(name)
        return self.sites[name]

    def setup(self, sites=None):
        sites = self.names if sites is None else sites
        roster_msg = self.server.collect_adverts({s: self.sites[s].advertise() for s in sites})
        bundles = {s: self.sites[s].receive_roster_and_share(roster_msg) for s in sites}
        return self.server.collect_share_bundles(bundles)

    def train(self, r, deltas, weights, skip=()):
        """Stage T; sites in `skip` drop before replying. Returns the updates."""
        reqs = self.train_request(r, [s for s in deltas] if deltas else None)
        ups = {s: self.sites[s].mask(r, deltas[s], weights[s], reqs[s], received=self.received(r))
               for s in reqs if s not in skip}
        self.server.collect_masked(r, {s: (u.vector, u.payload) for s, u in ups.items()})
        return ups

    def evaluate(self, r, skip=()):
        reqs = self.server.reveal_requests(r)
        replies = {s: self.sites[s].reveal(r, reqs[s]) for s in reqs if s not in skip}
        return self.server.unmask(r, replies)

    def round(self, r, deltas, weights, drop_before_train=(), drop_after_train=()):
        self.train(r, deltas, weights, skip=drop_before_train)
        return self.evaluate(r, skip=drop_after_train)


@pytest.fixture
def federation(tmp_path):
    def make(n, **kw):
        return Federation(tmp_path, n, **kw)
    return make
