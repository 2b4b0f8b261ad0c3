"""Secure aggregation in the round loop (the protocol itself: fl_client.secagg).

Setup (S1 advertise, S2 share) runs as two `query` stages once per session and
again whenever too few sites hold unused mask keys; every round's masking rides
on the T reply and the unmasking on the E stage, so a steady-state round has no
extra stage. A server restart starts a new session (fresh keys): the site
refuses to mask a round twice under one session.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fl_common.secagg import RoundFailed, SecAggError, min_threshold
from fl_server.secagg import ServerSecAgg

from .exchange import send_and_gather

log = logging.getLogger("fedvox.server")


class SecureAggregation:
    def __init__(self, spec: dict, fed: dict):
        self.roster = json.loads(Path(spec["roster"]).read_text())
        fl = fed["federation"]
        self.threshold = spec.get("threshold") or fl.get("secagg_threshold") or min_threshold(len(self.roster))
        self.clip_range = float(fl.get("secagg_clip", 4.0))
        self.max_weight = float(fl.get("secagg_max_weight", 1000.0))
        self.timeout = float(spec.get("setup_timeout", 300))
        self.session = None
        self.proto: ServerSecAgg | None = None
        self.site_node: dict[str, int] = {}
        self.failure: str | None = None
        self.clipped = 0

    def describe(self) -> dict:
        return {"mode": "secagg", "protocol": "double-masked SecAgg (Bonawitz et al. 2017), 2 stages/round",
                "threshold": int(self.threshold), "enrolled": len(self.roster), "clip_range": self.clip_range}

    # ----- setup ------------------------------------------------------------
    def _query(self, server, nodes, action: str, payloads: dict[int, bytes]) -> dict[str, bytes]:
        msgs = []
        for n in nodes:
            cfg = {"session": self.session}
            if n in payloads:
                cfg["payload"] = payloads[n]
            msgs.append(Message(content=RecordDict({"secagg": ConfigRecord(cfg)}), dst_node_id=n,
                                message_type=f"query.{action}"))
        out = {}
        for m in send_and_gather(server.grid, msgs, self.timeout):
            if m.has_error():
                log.warning("secagg %s: node %s failed: %s", action, m.metadata.src_node_id, m.error.reason)
                continue
            rec = m.content.config_records["secagg"]
            site = str(rec["site"])
            server.node_site[m.metadata.src_node_id] = site
            self.site_node[site] = m.metadata.src_node_id
            out[site] = bytes(rec["payload"])
        return out

    def setup(self, server, nodes) -> None:
        if self.session is None:
            n = int(server.record.info.get("secagg_sessions", 0)) + 1
            server.record.info["secagg_sessions"] = n
            server.record.start({})  # persist the session count before any key is made
            self.session = f"{server.record.info['run_id']}.s{n}"
        self.proto = ServerSecAgg(self.session, self.roster, threshold=int(self.threshold),
                                  clip_range=self.clip_range, max_weight=self.max_weight)
        adverts = self._query(server, nodes, "advertise", {})
        roster_msg = self.proto.collect_adverts(adverts)
        for site, why in self.proto.setup_rejected.items():
            log.warning("secagg setup: %s left out: %s", site, why)
        nodes_ok = [self.site_node[s] for s in adverts if s not in self.proto.setup_rejected]
        bundles = self._query(server, nodes_ok, "share", {n: roster_msg for n in nodes_ok})
        eligible = self.proto.collect_share_bundles(bundles)
        log.info("secagg session %s: %d sites eligible, threshold %d", self.session, len(eligible), self.threshold)
        self._server = server

    # ----- per round --------------------------------------------------------
    def train_extra(self, r, nodes) -> dict:
        self.failure = None
        sites = [self._server.node_site.get(n) for n in nodes]
        part = [s for s in sites if s in self.proto.eligible_sites()]
        if len(part) < self.threshold:  # spent or missing keys: re-key once, then go on
            self.setup(self._server, nodes)
            part = [s for s in sites if s in self.proto.eligible_sites()]
        try:
            reqs = self.proto.train_requests(r, participants=part)
        except RoundFailed as e:
            self.failure = str(e)
            return {}
        return {self.site_node[s]: {"secagg": ConfigRecord({"payload": p, "session": self.session})}
                for s, p in reqs.items()}

    def collect_train(self, r, replies: dict) -> None:
        if self.failure:
            return
        got = {}
        for node, m in replies.items():
            site = self._server.node_site[node]
            if "masked" not in m.content.array_records:
                log.warning("round %d: %s sent no masked vector", r, site)
                continue
            got[site] = (m.content.array_records["masked"]["vector"].numpy(),
                         bytes(m.content.config_records["secagg"]["payload"]))
        self.proto.collect_masked(r, got)

    def eval_extra(self, r, survivors) -> dict:
        if self.failure:
            return {}
        try:
            reqs = self.proto.reveal_requests(r)
        except RoundFailed as e:
            self.failure = str(e)
            return {}
        return {self.site_node[s]: {"secagg": ConfigRecord({"payload": p, "session": self.session})}
                for s, p in reqs.items()}

    def aggregate(self, r, survivors, eval_replies: dict, n: int):
        if self.failure:
            self.proto.fail_round(r)
            raise RoundFailed(self.failure)
        reveals = {}
        for node, m in eval_replies.items():
            rec = m.content.config_records.get("secagg")
            if rec is not None and "payload" in rec:
                reveals[self._server.node_site[node]] = bytes(rec["payload"])
        try:
            res = self.proto.unmask(r, reveals)
        except SecAggError as e:
            raise RoundFailed(f"unmasking failed: {e}") from None
        if res.mean.shape != (n,):
            raise RoundFailed(f"unmasked vector has {res.mean.shape[0]} values, the model {n}")
        self.clipped += int(res.clipped)
        if res.clipped:
            log.warning("round %d: %d delta values were clipped to +-%g", r, res.clipped, self.clip_range)
        return np.asarray(res.mean, np.float32), float(res.total_weight)

    def state(self) -> dict:
        return {"clipped_total": self.clipped}

    def load_state(self, st: dict) -> None:
        self.clipped = int(st.get("clipped_total", 0))
