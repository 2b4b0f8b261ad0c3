"""Secure aggregation in the round loop (the protocol itself: fl_client.secagg).

Setup (S1 advertise, S2 share) runs as two `query` stages once per session and
again whenever too few sites hold unused mask keys; every round's masking rides
on the T reply and the unmasking on the E stage, so a steady-state round has no
extra stage. A server restart starts a new session (fresh keys).

Once train requests for a round went out, the sites may have masked an update
from the current model, and each site's ledger refuses a second masked update
from that model or for that (run, round), in any session (a second sum over
other survivors would expose one site's update). So a round that fails or is
interrupted after T was sent is never replayed: model_spent() tells the round
loop, which then ends the run instead of retrying from the same model.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fl_common import keys as K
from fl_common.secagg import (DEFAULT_COLLUDING_SITES, RoundFailed, SecAggError, min_threshold,
                              two_site_warning)
from fl_server.secagg import ServerSecAgg

log = logging.getLogger("fedvox.server")
SESSIONS = "secagg_sessions"  # run.json: how many sessions this run has opened


def next_session(record) -> str:
    """A new session name for this run, counted in the run record and written
    before any key is made (so a restarted server never reuses one)."""
    n = int(record.info.get(SESSIONS, 0)) + 1
    record.info[SESSIONS] = n
    record.start({})
    return f"{record.info['run_id']}.s{n}"


class SecureAggregation:
    signs_received = True  # every site signs the digest of the model + config it got

    def __init__(self, roster: dict, new_session: Callable[[], str], threshold: int | None = None,
                 clip_range: float = 4.0, max_weight: float = 1000.0, setup_timeout: float = 300.0,
                 colluding_sites: int = DEFAULT_COLLUDING_SITES):
        self.roster = roster
        self.new_session = new_session
        self.colluding_sites = int(colluding_sites)
        self.threshold = int(threshold or min_threshold(len(roster), self.colluding_sites))
        self.clip_range, self.max_weight = float(clip_range), float(max_weight)
        self.timeout = float(setup_timeout)
        self.session: str | None = None
        self.proto: ServerSecAgg | None = None
        self.stage = None
        self.site_node: dict[str, int] = {}
        self.failure: str | None = None
        self.clipped = 0
        self.last = None  # the last round's AggregateResult (its tolerance, survivors, ...)
        self.summary: dict = {}
        self._spent: set[int] = set()  # rounds whose train requests went out
        self._keyed_without: set[str] | None = None  # connected sites the last setup left out
        self.warning = two_site_warning(len(roster))
        if self.warning:
            log.warning("secure aggregation: %s", self.warning)

    def describe(self) -> dict:
        out = {"mode": "secagg", "protocol": "double-masked SecAgg (Bonawitz et al. 2017), 2 stages/round",
               "threshold": int(self.threshold), "enrolled": len(self.roster),
               "colluding_sites": self.colluding_sites, "clip_range": self.clip_range}
        if self.warning:
            out["warning"] = self.warning
        return out

    def model_spent(self, r: int) -> bool:
        """Whether sites may have masked an update for round r (from the model
        it was sent with): then neither it nor that model may be sent again."""
        return int(r) in self._spent

    # ----- setup ------------------------------------------------------------
    def _payload(self, payload: bytes) -> ConfigRecord:
        return ConfigRecord({K.PAYLOAD: payload, K.SESSION: self.session})

    def _query(self, nodes, action: str, payloads: dict[int, bytes]) -> dict[str, bytes]:
        msgs = []
        for n in nodes:
            cfg = {K.SESSION: self.session}
            if n in payloads:
                cfg[K.PAYLOAD] = payloads[n]
            msgs.append(Message(content=RecordDict({K.REC_SECAGG: ConfigRecord(cfg)}), dst_node_id=n,
                                message_type=K.query_type(action)))
        ok, failed = self.stage.send(msgs, self.timeout,
                                     site_of=lambda m: m.content.config_records[K.REC_SECAGG][K.SITE])
        for f in failed:
            log.warning("secagg %s: node %s failed: %s", action, f["node"], f["error"])
        out = {}
        for node, m in ok.items():
            site = self.stage.site(node)
            self.site_node[site] = node
            out[site] = bytes(m.content.config_records[K.REC_SECAGG][K.PAYLOAD])
        return out

    def setup(self, stage, nodes) -> None:
        self.stage = stage
        if self.session is None:
            self.session = self.new_session()
        self.proto = ServerSecAgg(self.session, self.roster, threshold=self.threshold,
                                  clip_range=self.clip_range, max_weight=self.max_weight,
                                  colluding_sites=self.colluding_sites)
        adverts = self._query(nodes, K.SECAGG_ADVERTISE, {})
        roster_msg = self.proto.collect_adverts(adverts)
        for site, why in self.proto.setup_rejected.items():
            log.warning("secagg setup: %s left out: %s", site, why)
        nodes_ok = [self.site_node[s] for s in adverts if s not in self.proto.setup_rejected]
        bundles = self._query(nodes_ok, K.SECAGG_SHARE, {n: roster_msg for n in nodes_ok})
        eligible = self.proto.collect_share_bundles(bundles)
        self._keyed_without = self._outside(nodes, list(eligible))  # re-keyed for only when this set changes
        log.info("secagg session %s: %d sites eligible, threshold %d", self.session, len(eligible), self.threshold)

    # ----- per round --------------------------------------------------------
    def _sites(self, nodes) -> list:
        return [self.stage.node_site.get(n) for n in nodes]

    def _outside(self, nodes, part) -> set[str]:
        """Connected roster sites without keys here, and nodes not yet named."""
        return ({s for s in self._sites(nodes) if s in self.roster and s not in part}
                | {f"node {n}" for n in nodes if n not in self.stage.node_site})

    def train_extra(self, r, nodes, received: bytes) -> dict:
        self.failure = None
        part = [s for s in self._sites(nodes) if s in self.proto.eligible_sites()]
        # connected nodes without keys in this session: a site that dropped out and came
        # back (its old keys are spent: the others revealed what unmasks its dropout), or
        # one that connected after the setup (a node never heard from may be a roster site)
        outside = self._outside(nodes, part)
        rejoined = bool(outside) and outside != self._keyed_without
        if len(part) < self.threshold or rejoined:
            if rejoined:  # fresh keys for everyone connected: once per such set of nodes
                self.session = None
            self.setup(self.stage, nodes)
            part = [s for s in self._sites(nodes) if s in self.proto.eligible_sites()]
        try:
            reqs = self.proto.train_requests(r, participants=part, received=received)
        except RoundFailed as e:
            self.failure = str(e)
            return {}
        self._spent.add(int(r))
        return {self.site_node[s]: {K.REC_SECAGG: self._payload(p)} for s, p in reqs.items()}

    def collect_train(self, r, replies: dict) -> None:
        if self.failure:
            return
        got = {}
        for node, m in replies.items():
            site = self.stage.site(node)
            if K.REC_MASKED not in m.content.array_records:
                log.warning("round %d: %s sent no masked vector", r, site)
                continue
            got[site] = (m.content.array_records[K.REC_MASKED][K.VECTOR].numpy(),
                         bytes(m.content.config_records[K.REC_SECAGG][K.PAYLOAD]))
        self.proto.collect_masked(r, got)

    def eval_extra(self, r, survivors) -> dict:
        if self.failure:
            return {}
        try:
            reqs = self.proto.reveal_requests(r)
        except RoundFailed as e:
            self.failure = str(e)
            return {}
        return {self.site_node[s]: {K.REC_SECAGG: self._payload(p)} for s, p in reqs.items()}

    def aggregate(self, r, survivors, eval_replies: dict, n: int):
        if self.failure:
            self.proto.fail_round(r)
            raise RoundFailed(self.failure)
        reveals = {}
        for node, m in eval_replies.items():
            rec = m.content.config_records.get(K.REC_SECAGG)
            if rec is not None and K.PAYLOAD in rec:
                reveals[self.stage.site(node)] = bytes(rec[K.PAYLOAD])
        try:
            res = self.proto.unmask(r, reveals)
        except SecAggError as e:
            raise RoundFailed(f"unmasking failed: {e}") from None
        if res.mean.shape != (n,):
            raise RoundFailed(f"unmasked vector has {res.mean.shape[0]} values, the model {n}")
        self.last = res
        self.clipped += int(res.clipped)
        # the sites whose masked vectors were summed: a train reply without one is no update
        self.summary = {"sites_aggregated": len(res.survivors), "clipped": int(res.clipped),
                        **{f"sum_{k}": v for k, v in res.counts.items()}}
        if res.clipped:
            log.warning("round %d: %d delta values were clipped to +-%g", r, res.clipped, self.clip_range)
        return np.asarray(res.mean, np.float32), float(res.total_weight)

    def round_summary(self) -> dict:
        """What the last aggregated round adds to its row: summed values only."""
        return dict(self.summary)

    def state(self) -> dict:
        return {"clipped_total": self.clipped}

    def load_state(self, st: dict) -> None:
        self.clipped = int(st.get("clipped_total", 0))
