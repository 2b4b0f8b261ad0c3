"""fedvox's round loop on the Message API, over any object with Flower's Grid face.

One round = two message stages, as in plain FedAvg with federated evaluation:
  T (train):    w_r -> every site; each replies with its delta (masked when
                secure aggregation is on) and its aggregation weight.
  E (evaluate): each site reports validation metrics of w_r and of its
                local-only baseline; with secure aggregation the same reply
                carries what the server needs to strip the masks.
Then the server forms the weighted mean delta, applies the strategy and writes
the round atomically (checkpoint, rows, state.json). The held-out evaluation of
w_{r+1} on the coordinator's cases runs in a background thread while round r+1's
train stage runs (round 0's, of the initial model, while the sites connect and
round 1 trains); its metrics land on round r's row, and the best model is
chosen, when it is done and always before round r+1 is committed, so rounds are
complete in order. run.json ``central_pending`` names the committed round whose
evaluation is still running: a restarted server evaluates that round's saved
checkpoint again (the model is the one the round committed), so a restart mid
evaluation loses nothing and puts nothing on another round's row.
A late or failed site is left out of the round when at least `min_sites`
remain; otherwise the round fails and the global model is unchanged.

Everything the loop works with is handed to it (server_app.build_server makes
the real ones from the federation config; tests hand it a fake Grid), and it
reads no configuration itself.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fl_common.secagg.checks import received
from fl_common.tensors import flatten, to_record, unflatten
from fl_common import keys as K

from .aggregation import Aggregation, RoundFailed
from .central_eval import InBackground
from .exchange import Stage
from .records import RunRecord
from .strategy import ServerOptimizer

log = logging.getLogger("fedvox.server")
IN_FLIGHT = "round_in_flight"  # run.json: a round whose train requests went out, until it is committed
CENTRAL_PENDING = "central_pending"  # run.json: a committed round whose held-out evaluation is not recorded yet
# the sites' local-only baseline trains after their train reply (fl_client.worker), so its
# loss comes with the evaluate reply; the site row keeps it with the training scalars
LATE_TRAIN_METRICS = frozenset({"local_train_loss"})


class Evaluator(Protocol):
    def evaluate(self, weights: dict[str, np.ndarray]) -> tuple[dict, list, dict]: ...


@dataclass
class RoundSettings:
    rounds: int = 3
    min_sites: int = 2
    train_timeout: float = 900.0
    eval_timeout: float = 600.0
    connect_timeout: float = 300.0
    expected_sites: int = 0   # the federation's sites: once min_sites are there, the start waits
    join_grace: float = 20.0  # this long for the others (exchange.Stage.wait_for_nodes)
    site_round: dict = field(default_factory=dict)   # every T/E message's config, besides round, run and lr
    lr: Callable[[int], float] = lambda r: 0.0        # the sites' learning rate in round r
    best_metric: str = "dice_fg_mean"
    central_timeout: float = 3600.0  # the longest a round's commit waits for the previous held-out evaluation


def _site_of(m: Message):
    info = m.content.config_records.get(K.REC_INFO)
    return None if info is None else info[K.SITE]


def _metrics(m: Message) -> dict:
    return dict(m.content.metric_records[K.REC_METRICS])


class RoundLoop:
    """Rounds over ``grid`` (anything with Flower's Grid face); ``stage`` replaces
    the plain Stage over it (a bench times every stage this way)."""

    def __init__(self, grid, record: RunRecord, aggregation: Aggregation, optimizer: ServerOptimizer,
                 template: dict[str, np.ndarray], settings: RoundSettings,
                 central: Evaluator | None = None, run_info: dict | None = None, stage: Stage | None = None,
                 before_rounds: Callable | None = None, cross_models: dict[str, dict] | None = None,
                 preprocess: dict | None = None, plan_preprocess: bool = False,
                 central_for: Callable[[dict], Evaluator] | None = None):
        import imaging_core.train.checkpoint  # noqa: F401  torch: imported here, not in a timed round
        self.stage = stage or Stage(grid)
        self.record, self.aggregation, self.opt = record, aggregation, optimizer
        self.cfg, self.central = settings, central
        self.run_info = dict(run_info or {})  # what the run record states besides the loop's own settings
        self.before_rounds = before_rounds   # (stage, nodes): the plan's fingerprint query + check (plan_stage)
        self.weights = {k: np.array(v, np.float32, copy=True) for k, v in template.items()}
        self.cross_models = dict(cross_models or {})  # e.g. the pooled baseline, for the cross-site matrix
        self._pending: InBackground | None = None     # the held-out evaluation still running
        # the run's [preprocess] (a table dump), sent to every site in the round config (the
        # digest they sign covers it); plan_preprocess: it is plan.json's, known after before_rounds,
        # and the held-out evaluator is then built by central_for(table) (issue 16 "auto")
        self.preprocess, self.plan_preprocess, self.central_for = preprocess, plan_preprocess, central_for
        self._preprocess_wire = None if preprocess is None else K.preprocess_wire(preprocess)

    # ----- state ------------------------------------------------------------
    def flat(self) -> np.ndarray:
        return flatten(self.weights)

    def _set_flat(self, flat: np.ndarray) -> None:
        self.weights = unflatten(np.asarray(flat, np.float32), self.weights)

    def resume(self) -> int:
        """The first round still to run; the saved state of the last complete one is loaded."""
        last = self.record.last_round
        if last == 0:
            return 1
        st = self.record.load_round_checkpoint(last)  # data only, hash-checked against run.json
        self._set_flat(np.asarray(st["flat"], np.float32))
        self.opt.load_state(st["opt"])
        self.aggregation.load_state(st.get("aggregation", {}))
        log.info("resuming after round %d", last)
        return last + 1

    def _save_weights(self, which: str, weights: dict[str, np.ndarray] | None = None) -> None:
        import torch
        weights = self.weights if weights is None else weights
        self.record.save_model(which, {k: torch.from_numpy(v.copy()) for k, v in weights.items()})

    # ----- messaging --------------------------------------------------------
    def _round_config(self, r: int) -> dict:
        pre = {} if self._preprocess_wire is None else {K.PREPROCESS: self._preprocess_wire}
        return {K.SERVER_ROUND: r, K.RUN_ID: self.record.info["run_id"],
                K.LR: self.cfg.lr(r), **self.cfg.site_round, **pre}

    def _messages(self, nodes, kind: str, r: int, extra: dict) -> list[Message]:
        cfg = self._round_config(r)
        msgs = []
        for n in nodes:
            content = RecordDict({K.REC_CONFIG: ConfigRecord(dict(cfg)), K.REC_ARRAYS: to_record(self.weights)})
            for key, rec in extra.get(n, {}).items():
                content[key] = rec
            msgs.append(Message(content=content, dst_node_id=n, message_type=kind))
        return msgs

    def _send(self, nodes, kind: str, r: int, extra: dict, timeout: float, on_reply=None):
        return self.stage.send(self._messages(nodes, kind, r, extra), timeout, on_reply, site_of=_site_of)

    # ----- the run ----------------------------------------------------------
    def start(self) -> int:
        """Resume, state the run in the record, wait for the sites, set up the
        aggregation; returns the first round to run."""
        start = self.resume()
        # the held-out evaluation the sites need not wait for: the initial model's in a new run,
        # or, resumed, that of the last committed round if the server stopped before recording it
        fresh = start == 1 and not self.record.rounds
        redo = self.record.info.get(CENTRAL_PENDING)
        todo = 0 if fresh else start - 1 if redo == start - 1 else None
        if todo is None:  # none, or one for a round that was not committed: void
            self.record.info.pop(CENTRAL_PENDING, None)
        early = None if self.central is None or todo is None else InBackground(self.central, todo, self.weights)
        run_id = self.record.info.get("run_id") or time.strftime("%Y%m%d-%H%M%S")
        self.record.start({"run_id": run_id, **self.run_info,
                           "rounds": self.cfg.rounds, "strategy": self.opt.name, "min_sites": self.cfg.min_sites,
                           "server_optimizer": self.opt.settings(), "site_round": self.cfg.site_round,
                           "secure_aggregation": self.aggregation.describe(), "best_metric": self.cfg.best_metric})
        nodes = self.stage.wait_for_nodes(self.cfg.min_sites, self.cfg.connect_timeout,
                                          expected=self.cfg.expected_sites, grace=self.cfg.join_grace)
        self.record.event("sites_connected", sites=len(nodes), first_round=start, rounds=self.cfg.rounds)
        try:
            if self.before_rounds is not None and start == 1 and self.record.harmonisation is None:
                self.before_rounds(self.stage, nodes)
            self._settle_preprocess()
        except ValueError as e:  # PlanError, HarmonisationRefused, no plan: the run does not start
            self.record.finish("failed", reason=str(e))
            raise
        if self.central is None and self.central_for is not None and self.preprocess is not None:
            self.central = self.central_for(self.preprocess)  # the coordinator's cache, with the plan's table
            self.record.start({"evaluation_space": getattr(self.central, "space", None)})
            if todo is not None:
                early = InBackground(self.central, todo, self.weights)
        if early is not None:
            if fresh:
                self._save_weights("best")  # round 0 competes for best: a best model always exists
            self._pending_until_recorded(early, {"round": 0} if fresh else None)
        self.aggregation.setup(self.stage, nodes)
        return start

    def _settle_preprocess(self) -> None:
        """The run's one [preprocess]: plan.json's ("auto") or the federation's, and the
        same one a resumed run started with; into run.json (``preprocess``, ``preprocess_source``)."""
        if self.plan_preprocess:
            plan = self.record.plan
            if plan is None or not isinstance(plan.get("preprocess"), dict):
                raise ValueError(f"{self.record.dir / 'plan.json'}: missing: [preprocess] = \"auto\" trains "
                                 "with the plan's table and no plan was made (the plan stage did not run)")
            self.preprocess = plan["preprocess"]
            self._preprocess_wire = K.preprocess_wire(self.preprocess)
        if self.preprocess is None:
            return
        recorded = self.record.info.get("preprocess")
        if recorded is not None and K.preprocess_wire(recorded) != self._preprocess_wire:
            raise ValueError(f"{self.record.dir / 'run.json'}: the run started with another [preprocess] than "
                             "it has now; a run keeps one preprocessing (the sites refuse a change): "
                             "start a new run directory")
        self.record.start({"preprocess": self.preprocess,
                           "preprocess_source": "plan" if self.plan_preprocess else "federation"})

    # ----- the held-out evaluation, overlapped with the next round --------------
    def _pending_until_recorded(self, ev: InBackground, row: dict | None = None) -> None:
        """``ev`` is the evaluation of committed round ``ev.round``: run.json says so
        before its ``row`` (if new) is written, so a restart evaluates it again."""
        self.record.start({CENTRAL_PENDING: ev.round})
        if row is not None:
            self.record.add_round(row, [])
        self._pending = ev

    def _settle(self, wait: bool = True) -> None:
        """Record the running held-out evaluation (``wait=False``: only if it is done):
        metrics on its round's row, the best model if it is the best so far, then
        run.json forgets it. Rounds settle in order, so ``best`` sees every earlier round."""
        ev = self._pending
        if ev is None or not (wait or ev.done()):
            return
        scores, _, _ = ev.result(self.cfg.central_timeout)
        self.record.add_central(ev.round, scores, ev.seconds)
        best_round, _ = self.record.best(self.cfg.best_metric)
        if best_round == ev.round and ev.round > 0:  # round 0's was written before it was evaluated
            self._save_weights("best", ev.weights)
        self._pending = None
        self.record.info.pop(CENTRAL_PENDING, None)
        self.record.start({})
        metric = self.cfg.best_metric
        self.record.event("central_done", round=ev.round, seconds=ev.seconds, metric=metric,
                          value=scores.get(metric))

    def _stop_if_spent(self, r: int, row: dict | None) -> bool:
        """Secure aggregation: a round that failed, or was interrupted by a
        server restart, after its train requests went out is not re-run from
        the same model; the sites' ledgers would refuse it, and rightly (two
        masked sums from one model over different survivors expose one site's
        update). The run ends, saying why."""
        if row is None:  # resumed: was a round in flight when the server stopped?
            if int(self.record.info.get(IN_FLIGHT, 0)) != r:
                return False
            row = {"round": r, "status": "interrupted", "sites_aggregated": 0,
                   "reason": "the server stopped after sending this round's train requests"}
            self.record.add_round(row, [])
        elif row["status"] == "ok" or not self.aggregation.model_spent(r):
            return False
        self._settle()  # the last committed round's held-out metrics and best model first
        why = (f"round {r} {row['status']} after the sites may have masked updates from its model; "
               "secure aggregation never re-runs a round from the same model (the sites refuse "
               "it): start a new run from another model to go on")
        log.error("%s", why)
        self.record.finish("failed", reason=why)
        self.record.event("run_done", status="failed", reason=why)
        return True

    def run(self) -> None:
        first = self.start()
        if first <= self.cfg.rounds and self._stop_if_spent(first, None):
            return
        for r in range(first, self.cfg.rounds + 1):
            row = self.run_round(r, self.stage.nodes())
            if self._stop_if_spent(r, row):
                return
        self.final_evaluation(self.stage.nodes())
        best_round, best = self.record.best(self.cfg.best_metric)
        self.record.finish("completed", best_round=best_round, best_score=best)
        self.record.event("run_done", status="completed", best_round=best_round, metric=self.cfg.best_metric,
                          value=best)
        log.info("run complete: best %s %.4f at round %d", self.cfg.best_metric, best, best_round)

    def run_round(self, r: int, nodes: list[int]) -> dict:
        """One round over ``nodes``; returns the row it wrote to the run record."""
        t0 = time.perf_counter()
        row = {"round": r, "sites_sampled": len(nodes), "lr": self.cfg.lr(r)}
        self.record.event("round_start", round=r, rounds=self.cfg.rounds, sites=len(nodes))
        site_rows: dict[str, dict] = {}
        before = self.flat()
        agg = self.aggregation
        # the digest each site computes from what it gets, and signs with its masked update
        digest = (received(self.weights, self._round_config(r), self.record.info["run_id"], r).digest
                  if agg.signs_received else b"")
        extra = agg.train_extra(r, nodes, digest)
        if agg.model_spent(r):  # written before anything is sent: a restart must not replay it
            self.record.start({IN_FLIGHT: r})
        # each update is taken in (checked, summed) as it lands, while the other sites still train
        train_ok, train_failed = self._send(nodes, K.MSG_TRAIN, r, extra, self.cfg.train_timeout,
                                            on_reply=lambda n, m: agg.collect_train(r, {n: m}))
        self._stage_event(r, K.MSG_TRAIN, train_ok, train_failed, t0)
        self._settle(wait=False)
        for n, m in train_ok.items():
            site = self.stage.site(n)
            site_rows[site] = {"round": r, "site": site, **{f"{K.TRAIN}{k}": v for k, v in _metrics(m).items()}}
        survivors = sorted(train_ok)
        t_eval = time.perf_counter()
        eval_ok, eval_failed = ({}, []) if not survivors else self._send(
            survivors, K.MSG_EVALUATE, r, agg.eval_extra(r, survivors), self.cfg.eval_timeout)
        if survivors:
            self._stage_event(r, K.MSG_EVALUATE, eval_ok, eval_failed, t_eval)
        for n, m in eval_ok.items():
            site = self.stage.site(n)
            site_rows.setdefault(site, {"round": r, "site": site}).update(
                {f"{K.TRAIN if k in LATE_TRAIN_METRICS else K.VAL}{k}": v for k, v in _metrics(m).items()})
        row["train_seconds"] = round(time.perf_counter() - t0, 2)
        try:
            if len(survivors) < self.cfg.min_sites:
                raise RoundFailed(f"{len(survivors)} sites returned updates, {self.cfg.min_sites} required")
            mean_delta, total_weight = agg.aggregate(r, survivors, eval_ok, len(before))
            self._set_flat(self.opt.step(before, mean_delta))
            row.update(status="ok", sites_aggregated=len(survivors), total_weight=total_weight,
                       delta_norm=float(np.linalg.norm(mean_delta)))
            row.update(agg.round_summary())  # secure aggregation: how many masked vectors it summed
        except RoundFailed as e:
            log.warning("round %d failed: %s; the global model is unchanged", r, e)
            row.update(status="failed", reason=str(e), sites_aggregated=0)
        row["failures"] = [{"site": f["site"], "stage": st, "error": f["error"][:300]}
                           for st, fl in ((K.MSG_TRAIN, train_failed), (K.MSG_EVALUATE, eval_failed)) for f in fl]
        row["n_failures"] = len(row["failures"])
        self._settle()  # round r-1's held-out metrics and best model before round r is committed
        row["seconds"] = round(time.perf_counter() - t0, 2)
        self.record.save_round_checkpoint(r, {"flat": self.flat(), "opt": self.opt.state(), "round": r,
                                              "aggregation": agg.state()})
        self.record.add_round(row, list(site_rows.values()))
        evaluate = self.central is not None and row["status"] == "ok"
        if evaluate:  # in the background, while round r+1 trains; recorded by _settle
            self._pending_until_recorded(InBackground(self.central, r, self.weights))
        elif self.record.best(self.cfg.best_metric)[0] == r:  # no held-out metric: the final model is the best
            self._save_weights("best")
        self.record.commit_round(r)
        if self.record.info.get(IN_FLIGHT) == r:
            self.record.info.pop(IN_FLIGHT)
            self.record.start({})
        metric = f"{K.CENTRAL}{self.cfg.best_metric}"
        self.record.event("round_done", round=r, rounds=self.cfg.rounds, status=row["status"],
                          sites=row["sites_aggregated"], failed=row["n_failures"], seconds=row["seconds"],
                          metric=self.cfg.best_metric, value=row.get(metric), reason=row.get("reason"))
        log.info("round %d: %s", r, json.dumps({k: v for k, v in row.items() if k != "failures"}, default=str))
        return row

    def _stage_event(self, r: int, stage: str, ok: dict, failed: list, t0: float) -> None:
        """What one message stage did, site by site (the progress display and `runs status`)."""
        self.record.event("stage_done", round=r, stage=stage, seconds=round(time.perf_counter() - t0, 2),
                          ok=sorted(self.stage.site(n) for n in ok),
                          failed=[{"site": f["site"], "error": f["error"][:200]} for f in failed])

    def final_evaluation(self, nodes: list[int]) -> None:
        """Every site evaluates the final global model once more (its last local-only
        model too), so the comparison table is like for like."""
        self._save_weights("final")
        if not nodes:
            self._settle()
            return
        # the sites evaluate while the coordinator finishes the last round's held-out evaluation
        ok, failed = self._send(nodes, K.MSG_EVALUATE, self.cfg.rounds + 1, {}, self.cfg.eval_timeout)
        self._settle()  # the best model is known before the cross-site stage evaluates it
        rows = [{"site": self.stage.site(n), **_metrics(m)} for n, m in ok.items()]
        self.record.add_final_sites(rows, failed)
        from .cross_site import CrossSite  # every model on every site's data, within the sites' policies
        try:
            CrossSite(self, self.cross_models).run(sorted(ok), rows)
        except Exception as e:  # noqa: BLE001 - the rounds are complete; the matrix is an extra
            log.exception("cross-site evaluation failed")
            self.record.event("cross_site_failed", error=f"{type(e).__name__}: {e}"[:300])
