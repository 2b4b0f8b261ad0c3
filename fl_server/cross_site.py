"""Cross-site evaluation, the run's last stage: every model on every evaluation set.

After the final evaluation (final_sites.json) the coordinator
  1. asks each site for its local-only model (query.local_model). A site sends
     it only when its own [policy] says share_local_model = true: that is its
     consent, and the weights then reach the coordinator and every other site.
     A refusal is recorded as "no consent", and that site's local model appears
     only on its own data (its final-stage local/ metrics), never elsewhere;
  2. sends every model (global final, global best, every shared local model, any
     extra one such as the pooled baseline) to every site in one message per site
     (evaluate.cross_site, model i in record arrays.<i>: one ClientApp start, not one per model).
     Each site evaluates it on its validation cases within its own bound
     (fl_client.policy.admit_cross_site: after the final evaluation only, once
     per model hash, at most max_cross_site_models);
  3. evaluates each model on its own held-out cases.
The matrix goes to cross_site.json through RunRecord.add_cross_site; per-case
values are kept where a site's policy lets them leave (and always held-out).
The held-out per-case rows in full (case ids, ASSD; the coordinator's own cases)
go to held_out_cases.json by model hash, so the report reuses them instead of
evaluating the same models on the same cases again.
"""
from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

from fl_common import keys as K
from fl_common.tensors import from_record, to_record
from imaging_core.metrics.summary import per_case_values

from .report.reading import GLOBAL_BEST, GLOBAL_FINAL, HELD_OUT, LOCAL

log = logging.getLogger("fedvox.server")
POOLED = "pooled (baseline)"


def local_name(site: str) -> str:
    return f"{LOCAL} ({site})"


def model_hash_of(weights: dict[str, np.ndarray]) -> str:
    """Equal for equal models (names, shapes, float32 bytes): a site evaluates a model once."""
    h = hashlib.sha256()
    for k in sorted(weights):
        a = np.ascontiguousarray(weights[k], np.float32)
        h.update(f"{k}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _numpy(state: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v, np.float32) for k, v in state.items()}


def _matches(template: dict, weights: dict) -> bool:
    return set(template) == set(weights) and all(np.shape(template[k]) == np.shape(weights[k]) for k in template)


class CrossSite:
    """The stage over a RoundLoop's exchange, record, settings and central evaluator."""

    def __init__(self, loop, extra: dict[str, dict] | None = None):
        self.loop, self.extra = loop, dict(extra or {})
        self.failures: list[dict] = []

    def _query(self, nodes, kind: str, cfg: dict):
        from .round_loop import _site_of
        messages = [Message(content=RecordDict({K.REC_CONFIG: ConfigRecord(dict(cfg))}), dst_node_id=n,
                            message_type=kind) for n in nodes]
        return self.loop.stage.send(messages, self.loop.cfg.eval_timeout, site_of=_site_of)

    def models(self, nodes) -> tuple[dict[str, dict], dict[str, bool]]:
        """name -> weights of every model to evaluate, and each site's consent."""
        loop = self.loop
        models = {GLOBAL_FINAL: {k: v.copy() for k, v in loop.weights.items()}}
        try:
            models[GLOBAL_BEST] = _numpy(loop.record.load_model("best"))
        except (OSError, ValueError, KeyError) as e:
            log.warning("cross-site: no best model to evaluate (%s)", e)
        consent: dict[str, bool] = {}
        if loop.cfg.site_round.get("local_baseline"):
            cfg = loop._round_config(loop.cfg.rounds + 1)
            ok, failed = self._query(nodes, K.query_type(K.LOCAL_MODEL), cfg)
            for n, m in sorted(ok.items(), key=lambda nm: loop.stage.site(nm[0])):  # rows in site order
                site = loop.stage.site(n)
                weights = from_record(m.content.array_records[K.REC_ARRAYS])
                if not _matches(loop.weights, weights):
                    log.warning("cross-site: %s sent a local model that is not the federation's model", site)
                    continue
                consent[site] = True
                models[local_name(site)] = _numpy(weights)
            for f in failed:  # a refusal (no consent) or a failure: nothing of that model left the site
                consent.setdefault(f["site"], False)
                if not f["error"].startswith("policy:"):  # a refusal is the site's answer, not a failure
                    self.failures.append({"model": local_name(f["site"]), "site": f["site"],
                                          "error": f["error"][:200]})
        for name, weights in self.extra.items():
            if _matches(loop.weights, weights):
                models[name] = _numpy(weights)
            else:
                log.warning("cross-site: %s is not the federation's model; left out", name)
        return models, consent

    def _at_sites(self, nodes, models: dict[str, dict]) -> list[dict]:
        """Every model at every site in one message per site (a ClientApp start costs
        seconds, an evaluation of a small model less): a row per site and model answered."""
        from .round_loop import _site_of
        loop, names = self.loop, list(models)
        if not names:
            return []
        cfg = {**loop._round_config(loop.cfg.rounds + 1), K.CROSS_MODELS: names}
        messages = []
        for n in nodes:
            content = RecordDict({K.REC_CONFIG: ConfigRecord(dict(cfg))})
            for i, name in enumerate(names):
                content[K.batch_record(K.REC_ARRAYS, i)] = to_record(models[name])
            messages.append(Message(content=content, dst_node_id=n, message_type=K.evaluate_type(K.CROSS_SITE)))
        t0 = time.perf_counter()
        ok, failed = loop.stage.send(messages, loop.cfg.eval_timeout * len(names), site_of=_site_of)
        loop._stage_event(loop.cfg.rounds + 1, f"cross-site evaluation of {len(names)} models", ok, failed, t0)
        self.failures += [{"model": name, "site": f["site"], "error": f["error"][:200]}
                          for f in failed for name in names]
        rows = []
        for i, name in enumerate(names):  # model-major rows, as one stage per model gave them
            for n, m in ok.items():
                site = loop.stage.site(n)
                refused = m.content.config_records.get(K.REC_REFUSED) or {}
                metrics = m.content.metric_records.get(K.batch_record(K.REC_METRICS, i))
                if metrics is None:  # the site's policy refused this one model (or said nothing of it)
                    self.failures.append({"model": name, "site": site,
                                          "error": str(refused.get(str(i), "no metrics in the reply"))[:200]})
                    continue
                row = {"model": name, "eval_set": site, **dict(metrics)}
                if K.NUM_EXAMPLES in row:
                    row["cases"] = row.pop(K.NUM_EXAMPLES)
                cases = m.content.metric_records.get(K.batch_record(K.REC_CASES, i))
                if cases is not None:
                    row["per_case"] = {k: list(v) for k, v in cases.items()}
                rows.append(row)
        return rows

    def run(self, nodes: list[int], final_rows: list[dict]) -> None:
        loop = self.loop
        models, consent = self.models(nodes)
        rows: list[dict] = []
        unique: dict[str, str] = {}  # model hash -> the first name (a site evaluates a model once)
        alias: dict[str, str] = {}   # e.g. global (best) -> global (final) when they are one model
        for name, weights in models.items():
            alias[name] = unique.setdefault(model_hash_of(weights), name)
        with ThreadPoolExecutor(max_workers=1) as pool:
            # the held-out evaluations run here while the sites evaluate (the server is idle then)
            central = {name: pool.submit(loop.central.evaluate, models[name])
                       for name in unique.values()} if loop.central is not None else {}
            rows += self._at_sites(nodes, {name: models[name] for name in unique.values()})
            n_cls = getattr(loop.central, "num_classes", 0)  # CentralEvaluator's; without it no per-case
            held: dict[str, dict] = {}
            for name, fut in central.items():
                scores, per_case, _ = fut.result()
                held[model_hash_of(models[name])] = {"name": name, "cases": per_case}
                rows.append({"model": name, "eval_set": HELD_OUT, "cases": len(per_case), **scores,
                             **({"per_case": per_case_values(per_case, n_cls)} if n_cls and per_case else {})})
        if held:
            loop.record.add_held_out_cases(held)
        rows += [{**r, "model": name} for name, first in alias.items() if name != first
                 for r in list(rows) if r["model"] == first]
        # a site that did not share its local model: that model on its own data only
        for r in final_rows:
            site = r["site"]
            if consent.get(site):
                continue
            own = {k[len(K.LOCAL):]: v for k, v in r.items() if k.startswith(K.LOCAL)}
            if own:
                consent.setdefault(site, False)
                rows.append({"model": local_name(site), "eval_set": site, **own,
                             **({"cases": r[K.NUM_EXAMPLES]} if K.NUM_EXAMPLES in r else {})})
        loop.record.add_cross_site(rows, consent, self.failures)
        loop.record.event("cross_site_done", models=len(models), rows=len(rows),
                          shared=sorted(s for s, c in consent.items() if c), failed=len(self.failures))
