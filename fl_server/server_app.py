"""The Flower ServerApp: fedvox's own round loop on the Message API.

One round = two message stages, as in plain FedAvg with federated evaluation:
  T (train):    w_r -> every site; each replies with its delta (masked when
                secure aggregation is on) and its aggregation weight.
  E (evaluate): each site reports validation metrics of w_r and of its
                local-only baseline; with secure aggregation the same reply
                carries what the server needs to strip the masks.
Then the server forms the weighted mean delta, applies the strategy, evaluates
w_{r+1} on the coordinator's held-out cases and writes the round atomically.
A late or failed site is left out of the round when at least `min_sites`
remain; otherwise the round fails and the global model is unchanged.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from fl_common.tensors import flatten, unflatten

from .aggregation import RoundFailed, make_aggregation
from .exchange import send_and_gather
from .records import RunRecord
from .strategy import ServerOptimizer, site_lr, site_round_config

log = logging.getLogger("fedvox.server")
app = ServerApp()


class FederatedServer:
    def __init__(self, spec: dict, grid: Grid):
        import torch
        from imaging_core.train.checkpoint import load_checkpoint, save_checkpoint
        from imaging_core.train.task import build_net, float_state
        from .config import load_federation
        self._torch, self._save, self._load = torch, save_checkpoint, load_checkpoint
        self.spec, self.grid = spec, grid
        self.fed = load_federation(spec["federation"], data_base=spec.get("data_base"))
        fl = self.fed["federation"]
        self.rounds = int(spec.get("rounds", fl.get("rounds", 3)))
        self.min_sites = int(spec.get("min_sites", fl.get("min_sites", 2)))
        self.train_timeout = float(spec.get("train_timeout", fl.get("train_timeout", 900)))
        self.eval_timeout = float(spec.get("eval_timeout", fl.get("eval_timeout", 600)))
        self.connect_timeout = float(spec.get("connect_timeout", 300))
        self.best_metric = str(fl.get("best_metric", "dice_fg_mean"))
        self.num_classes = len(self.fed["labels"])
        self.record = RunRecord(spec["run_dir"])
        seed = int(fl.get("seed", 0))
        self.template = {k: v.numpy() for k, v in
                         float_state(build_net(self.fed["model"], self.num_classes, seed=seed)).items()}
        self.weights = {k: v.copy() for k, v in self.template.items()}
        self.opt = ServerOptimizer.from_federation(fl)
        self.site_cfg = site_round_config(fl)
        self.aggregation = make_aggregation(spec, self.fed)
        self.central = None
        if "coordinator" in self.fed:
            from .central_eval import CentralEvaluator
            self.central = CentralEvaluator(self.fed, self.fed["coordinator"],
                                            Path(spec["run_dir"]) / "coordinator-cache",
                                            spec.get("device", "cpu"))
        self.node_site: dict[int, str] = {}

    # ----- state ------------------------------------------------------------
    def _flat(self) -> np.ndarray:
        return flatten(self.weights)

    def _set_flat(self, flat: np.ndarray) -> None:
        self.weights = unflatten(np.asarray(flat, np.float32), self.weights)

    def _resume(self) -> int:
        last = self.record.last_round
        if last == 0:
            return 1
        st = self._load(self.record.checkpoint_path(last))  # hash-checked: a corrupt file is refused
        self._set_flat(np.asarray(st["flat"], np.float32))
        self.opt.load_state(st["opt"])
        self.aggregation.load_state(st.get("aggregation", {}))
        log.info("resuming after round %d", last)
        return last + 1

    def _state_dict(self):
        return {k: self._torch.from_numpy(v.copy()) for k, v in self.weights.items()}

    def round_lr(self, r: int) -> float:
        return site_lr(self.fed["train"], self.rounds, self.site_cfg["local_epochs"], r)

    # ----- messaging --------------------------------------------------------
    def _wait_for_nodes(self) -> list[int]:
        deadline = time.monotonic() + self.connect_timeout
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= self.min_sites:
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of the {self.min_sites} required sites connected "
                                   f"within {self.connect_timeout:.0f} s")
            time.sleep(1.0)

    def _send(self, nodes, kind: str, r: int, extra: dict, timeout: float, arrays=True,
              on_reply=None) -> tuple[dict, list]:
        """One stage -> ({node: reply}, [failures]); ``on_reply(node, message)``
        runs for each good reply as it arrives."""
        msgs = []
        for n in nodes:
            content = RecordDict({"config": ConfigRecord({"server-round": r, "run-id": self.record.info["run_id"],
                                                          "lr": self.round_lr(r), **self.site_cfg})})
            if arrays:
                content["arrays"] = ArrayRecord({k: Array(v) for k, v in self.weights.items()})
            for key, rec in extra.get(n, {}).items():
                content[key] = rec
            msgs.append(Message(content=content, dst_node_id=n, message_type=kind))
        ok, failed = {}, []

        def land(m):
            node = m.metadata.src_node_id
            if m.has_error():
                failed.append({"node": node, "error": m.error.reason})
                return
            info = m.content.config_records.get("info")
            if info is not None:
                self.node_site[node] = str(info["site"])
            ok[node] = m
            if on_reply is not None:
                on_reply(node, m)

        send_and_gather(self.grid, msgs, timeout, on_reply=land)
        # the SuperLink answers for a node that went away with an error from its own id:
        # attribute such errors to the nodes that gave no reply of their own
        foreign = [f["error"] for f in failed if f["node"] not in nodes]
        failed = [f for f in failed if f["node"] in nodes]
        answered = set(ok) | {f["node"] for f in failed}
        why = "; ".join(sorted(set(foreign))) or "no reply before the timeout"
        failed += [{"node": n, "error": why} for n in nodes if n not in answered]
        for f in failed:
            f["site"] = self.node_site.get(f["node"], str(f["node"]))
        return ok, failed

    # ----- the run ----------------------------------------------------------
    def run(self) -> None:
        start = self._resume()
        run_id = self.record.info.get("run_id") or time.strftime("%Y%m%d-%H%M%S")
        self.record.start({"run_id": run_id, "federation": self.fed["federation"].get("name"),
                           "federation_path": str(Path(self.spec["federation"]).resolve()),
                           "data_base": self.spec.get("data_base"),
                           "rounds": self.rounds, "strategy": self.opt.name, "min_sites": self.min_sites,
                           "server_optimizer": self.opt.settings(), "site_round": self.site_cfg,
                           "secure_aggregation": self.aggregation.describe(),
                           "labels": {str(k): v for k, v in self.fed["labels"].items()},
                           "model": self.fed["model"], "best_metric": self.best_metric,
                           "postprocess": self.fed.get("postprocess")})
        nodes = self._wait_for_nodes()
        self.aggregation.setup(self, nodes)
        if start == 1 and self.central is not None and not self.record.rounds:
            scores, _, _ = self.central.evaluate(self.weights)
            self.record.add_round({"round": 0, **{f"central/{k}": v for k, v in scores.items()}}, [])
        for r in range(start, self.rounds + 1):
            self.run_round(r, sorted(self.grid.get_node_ids()))
        self._final_evaluation(sorted(self.grid.get_node_ids()))
        best_round, best = self.record.best(self.best_metric)
        self.record.finish("completed", best_round=best_round, best_score=best)
        log.info("run complete: best %s %.4f at round %d", self.best_metric, best, best_round)

    def run_round(self, r: int, nodes: list[int]) -> None:
        t0 = time.perf_counter()
        row = {"round": r, "sites_sampled": len(nodes), "lr": self.round_lr(r)}
        site_rows: dict[str, dict] = {}
        before = self._flat()
        # each update is taken in (checked, summed) as it lands, while the other sites still train
        train_ok, train_failed = self._send(nodes, "train", r, self.aggregation.train_extra(r, nodes),
                                            self.train_timeout,
                                            on_reply=lambda n, m: self.aggregation.collect_train(r, {n: m}))
        for n, m in train_ok.items():
            site_rows[self.node_site[n]] = {"round": r, "site": self.node_site[n],
                                            **{f"train/{k}": v for k, v in m.content.metric_records["metrics"].items()}}
        survivors = sorted(train_ok)
        eval_ok, eval_failed = ({}, []) if not survivors else self._send(
            survivors, "evaluate", r, self.aggregation.eval_extra(r, survivors), self.eval_timeout)
        for n, m in eval_ok.items():
            site_rows.setdefault(self.node_site[n], {"round": r, "site": self.node_site[n]}).update(
                {f"val/{k}": v for k, v in m.content.metric_records["metrics"].items()})
        row["train_seconds"] = round(time.perf_counter() - t0, 2)
        try:
            if len(survivors) < self.min_sites:
                raise RoundFailed(f"{len(survivors)} sites returned updates, {self.min_sites} required")
            mean_delta, total_weight = self.aggregation.aggregate(r, survivors, eval_ok, len(before))
            self._set_flat(self.opt.step(before, mean_delta))
            row.update(status="ok", sites_aggregated=len(survivors), total_weight=total_weight,
                       delta_norm=float(np.linalg.norm(mean_delta)))
        except RoundFailed as e:
            log.warning("round %d failed: %s; the global model is unchanged", r, e)
            row.update(status="failed", reason=str(e), sites_aggregated=0)
        row["failures"] = [{"site": f["site"], "stage": st, "error": f["error"][:300]}
                           for st, fl in (("train", train_failed), ("evaluate", eval_failed)) for f in fl]
        row["n_failures"] = len(row["failures"])
        if self.central is not None and row["status"] == "ok":
            scores, _, _ = self.central.evaluate(self.weights)
            row.update({f"central/{k}": v for k, v in scores.items()})
        row["seconds"] = round(time.perf_counter() - t0, 2)
        self._save({"flat": self._flat(), "opt": self.opt.state(), "round": r,
                    "aggregation": self.aggregation.state()}, self.record.checkpoint_path(r))
        self.record.add_round(row, list(site_rows.values()))
        best_round, _ = self.record.best(self.best_metric)
        if best_round == r:
            self._save(self._state_dict(), self.record.dir / "global_best.pt")
        self.record.commit_round(r)
        log.info("round %d: %s", r, json.dumps({k: v for k, v in row.items() if k != "failures"}, default=str))

    def _final_evaluation(self, nodes: list[int]) -> None:
        """Every site evaluates the final global model once more (its last local-only
        model too), so the comparison table is like for like."""
        self._save(self._state_dict(), self.record.dir / "global_final.pt")
        if not nodes:
            return
        ok, failed = self._send(nodes, "evaluate", self.rounds + 1, {}, self.eval_timeout)
        rows = [{"site": self.node_site[n], **dict(m.content.metric_records["metrics"])} for n, m in ok.items()]
        from .records import write_csv, write_json
        write_json(self.record.dir / "final_sites.json", {"sites": rows, "failures": failed})
        write_csv(self.record.dir / "final_sites.csv", rows)


@app.main()
def main(grid: Grid, context: Context) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(str(context.run_config["spec"])).read_text())
    FederatedServer(spec, grid).run()
