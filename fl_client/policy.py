"""The site policy: a site answers only what its own site.toml ([policy]) agreed to.

The ClientApp shim calls ``admit_train`` / ``admit_evaluate`` before anything
reaches the site worker, and ``outgoing`` on the metrics before anything is
sent back; a request outside the policy is refused with a code and a fixed
short reason (``Refused``). Torch-free: the shim imports it.

The ClientApp is a new process per message, so what must hold across messages
lives on disk under the node's state dir (``PolicyState``): per run, the hash
of the model each round's train message carried and the evaluations left.

Cross-site evaluation (after the final evaluation only): each other model is
evaluated once per hash, at most ``max_cross_site_models`` per run, so the
final stage is no open evaluation oracle; the local-only model leaves only with
``share_local_model = true`` (the site's consent), only the final one of the
run's own training, and each model at most once ever (fl_client.release_ledger,
which also bounds new runs and fingerprint answers per day).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
from pathlib import Path

import numpy as np

from fl_common import keys as K
from fl_common.config import PolicyTable, read_site_file

from .release_ledger import LedgerFault, ReleaseLedger, locked_json, now, run_tag, started_today, write_private


class Refused(Exception):
    """A request this site does not answer: ``code`` (keys.ERR_*) and a fixed reason."""

    def __init__(self, reason: str, code: int = K.ERR_REFUSED):
        super().__init__(reason)
        self.code, self.reason = code, reason


# the only texts an error reply carries (no exception text, no path, no value)
SECAGG_REQUIRED = "policy: this site sends updates only under secure aggregation"
BAD_ROUND = "policy: round number outside the site's bounds"
BAD_RUN = "policy: missing or malformed run id"
RUN_CLOSED = "policy: the run's final evaluation is done"
ROUND_BACKWARDS = "policy: a round older than one already trained"
MODEL_CHANGED = "policy: a different model for a round already trained"
EVAL_NOT_ALLOWED = "policy: no evaluation left for this round"
EVAL_WRONG_MODEL = "policy: evaluation only of the model this round trained"
UNKNOWN_KEY = "policy: round config has a key this site does not accept"
CROSS_NOT_FINAL = "policy: other models are evaluated only after the run's final evaluation"
CROSS_REPEAT = "policy: this model was already evaluated in this run"
CROSS_BOUND = "policy: no cross-site evaluation left in this run"
NO_CONSENT = "policy: this site does not share its local model"
LOCAL_SHARED = "policy: the local model was already sent in this run"
LOCAL_SENT_BEFORE = "policy: this local model was already sent"
RUNS_BOUND = "policy: no new run left today"
FINGERPRINT_REPEAT = "policy: this run's fingerprint was already answered"
FINGERPRINT_BOUND = "policy: no fingerprint answer left today"
PREPROCESS_BAD = "policy: round config preprocess is no valid table within the site's bounds"
PREPROCESS_CHANGED = "policy: the preprocessing changed within the run"
PREPROCESS_DIFFERS = "policy: the round's preprocessing differs from this site's explicit [preprocess]"
PREPROCESS_MISSING = "policy: this site's [preprocess] is \"auto\" and the round config carries no table"
BAD_REQUEST = "bad request: a record or key is missing or malformed"
WORKER_FAILED = "the site worker failed; see the site's logs"
INTERNAL = "the site failed; see the site's logs"


class SiteFault(Exception):
    """The site's own files are wrong (e.g. a bad [policy]): its fault, not the request's."""


def bound_reason(key: str) -> str:
    return f"policy: round config {key} outside the site's bounds"


def load_policy(node_config) -> PolicyTable:
    """The [policy] of the site's own site.toml (node-config ``site-config``), read
    for this message; without one the defaults hold (secure aggregation required)."""
    path = node_config.get(K.NODE_SITE_CONFIG)
    try:
        return read_site_file(str(path)).policy if path else PolicyTable()
    except ValueError as e:  # ConfigError / ImagingError: one line naming the file, for the site's log
        raise SiteFault(str(e)) from None


@contextlib.contextmanager
def _releases(state_dir):
    try:
        with ReleaseLedger(state_dir).open() as data:
            yield data
    except LedgerFault as e:
        raise SiteFault(str(e)) from None


# ----- the round config -------------------------------------------------------
def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_config(pol: PolicyTable, cfg: dict, kind: str) -> int:
    """The round config within the policy's bounds; returns the round number."""
    rnd = cfg.get(K.SERVER_ROUND)
    last = pol.max_rounds + (1 if kind == K.MSG_EVALUATE else 0)  # + the final evaluation
    if not _int(rnd) or not 1 <= rnd <= last:
        raise Refused(BAD_ROUND)
    run = cfg.get(K.RUN_ID)
    if not isinstance(run, str) or not 0 < len(run) <= 128:
        raise Refused(BAD_RUN)
    bounds = {  # key -> (is it the right type, is it inside the bounds)
        K.LR: (_num, lambda v: 0 < v <= pol.max_lr),
        "local_epochs": (_int, lambda v: 1 <= v <= pol.max_local_epochs),
        "prox_mu": (_num, lambda v: 0 <= v <= pol.max_prox_mu),
        "cases_per_batch": (_int, lambda v: 1 <= v <= pol.max_cases_per_batch),
        "patches_per_step": (_int, lambda v: 1 <= v <= pol.max_patches_per_step),
        "local_baseline": (lambda v: isinstance(v, bool), lambda v: True),
        "keep_site_optimizer": (lambda v: isinstance(v, bool), lambda v: True),
        K.PREPROCESS: (lambda v: isinstance(v, str), lambda v: True),  # its content: check_preprocess
    }
    for key, v in cfg.items():
        if key in (K.SERVER_ROUND, K.RUN_ID):
            continue
        if key not in bounds:
            raise Refused(UNKNOWN_KEY)
        typed, inside = bounds[key]
        if not typed(v) or not inside(v):
            raise Refused(bound_reason(key))
    if kind == K.MSG_TRAIN and K.LR not in cfg:  # the worker's default would be the federation's
        raise Refused(bound_reason(K.LR))
    if K.PREPROCESS in cfg:
        check_preprocess(pol, cfg[K.PREPROCESS])
    return rnd


def check_preprocess(pol: PolicyTable, wire: str) -> dict:
    """The server's [preprocess] (round config text): a valid PreprocessTable with every
    pixdim within [min_pixdim_mm, max_pixdim_mm] and margin <= max_margin; its dump."""
    from imaging_core.config import PreprocessTable
    try:
        table = PreprocessTable.model_validate(json.loads(wire))
    except ValueError:  # bad JSON or a bad table: pydantic's ValidationError is a ValueError
        raise Refused(PREPROCESS_BAD) from None
    if not all(pol.min_pixdim_mm <= p <= pol.max_pixdim_mm for p in table.pixdim) or table.margin > pol.max_margin:
        raise Refused(PREPROCESS_BAD)
    return table.model_dump()


def admit_preprocess(pol: PolicyTable, own: dict, cfg: dict) -> None:
    """The site's own federation TOML decides (``own``: the worker's PREPROCESS_FILE,
    {"auto": true} or {"auto": false, "table": dump}): "auto" takes the server's table and
    needs one; an explicit table wins, and a server table other than it is refused."""
    wire = cfg.get(K.PREPROCESS)
    if own.get("auto"):
        if wire is None:
            raise Refused(PREPROCESS_MISSING)
    elif wire is not None and K.preprocess_wire(check_preprocess(pol, wire)) != K.preprocess_wire(own["table"]):
        raise Refused(PREPROCESS_DIFFERS)


def _same_preprocess(st: dict, cfg: dict) -> None:
    """One preprocessing per run id: the first table seen is kept in the run's state."""
    wire = cfg.get(K.PREPROCESS)
    if wire is None:
        return
    digest = hashlib.sha256(K.preprocess_wire(json.loads(wire)).encode()).hexdigest()
    if st.setdefault("preprocess", digest) != digest:
        raise Refused(PREPROCESS_CHANGED)


# ----- what may leave ---------------------------------------------------------
def _pattern(names) -> re.Pattern:
    alts = [re.escape(n).replace(re.escape("<c>"), r"\d+") for n in names]
    return re.compile(rf"(?:{re.escape(K.GLOBAL)}|{re.escape(K.LOCAL)})?(?:{'|'.join(alts)})")


def outgoing(pol: PolicyTable, metrics: dict) -> dict:
    """Only allow-listed scalar metrics (names of fl_common.config.POLICY_METRICS)."""
    pat = _pattern(pol.metrics)
    return {k: float(v) for k, v in metrics.items()
            if isinstance(k, str) and pat.fullmatch(k) and isinstance(v, (int, float)) and not isinstance(v, bool)}


def case_counts_allowed(pol: PolicyTable) -> bool:
    return "num_val" in pol.metrics


def model_hash(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# ----- state across messages --------------------------------------------------
class PolicyState:
    """One run's trained rounds and evaluations at this site, in
    ``state_dir/policy/run-<hash of the run id>.json`` (0600, atomic replace,
    one message at a time under a lock)."""

    def __init__(self, state_dir: str | os.PathLike, run_id: str):
        self.dir = Path(state_dir) / "policy"
        self.path = self.dir / f"run-{run_tag(run_id)}.json"

    def open(self):
        return locked_json(self.dir / "lock", self.path, lambda: json.loads(self.path.read_text())
                           if self.path.exists() else {"latest": 0, "trained": {}, "evals_left": 0, "closed": False})


def admit_train(pol: PolicyTable, state_dir, cfg: dict, arrays: dict, secure: bool) -> int:
    """Raise Refused unless this train request is within the policy; record its model."""
    if pol.require_secure_aggregation and not secure:
        raise Refused(SECAGG_REQUIRED)
    rnd = check_config(pol, cfg, K.MSG_TRAIN)
    digest = model_hash(arrays)
    with PolicyState(state_dir, cfg[K.RUN_ID]).open() as st:
        if st["closed"]:
            raise Refused(RUN_CLOSED)
        if rnd < st["latest"]:
            raise Refused(ROUND_BACKWARDS)
        if rnd == st["latest"] and st["trained"][str(rnd)] != digest:
            raise Refused(MODEL_CHANGED)
        _same_preprocess(st, cfg)
        if not st["trained"]:  # a new run: one more local training, bounded per day
            _start_run(pol, state_dir, cfg[K.RUN_ID])
        # a replayed round (server restart) trains the same model again and may be evaluated again
        st["trained"][str(rnd)], st["latest"], st["evals_left"] = digest, rnd, 1
    return rnd


def _start_run(pol: PolicyTable, state_dir, run: str) -> None:
    with _releases(state_dir) as led:
        tag, t = run_tag(run), now()
        if tag not in led["runs"]:
            if started_today(led["runs"], t) >= pol.max_runs_per_day:
                raise Refused(RUNS_BOUND)
            led["runs"][tag] = t


def request_digest(cfg: dict, secagg: dict | None) -> str:
    """What identifies a fingerprint request: its round config and secure-aggregation record."""
    def plain(v):
        return v.hex() if isinstance(v, bytes) else repr(v)
    return hashlib.sha256(json.dumps([cfg, secagg], sort_keys=True, default=plain).encode()).hexdigest()


def admit_fingerprint(pol: PolicyTable, state_dir, cfg: dict, request: str, secure: bool) -> dict | None:
    """The plan's fingerprint query: its histogram vector leaves only masked, like an
    update, unless the site itself opted out of secure aggregation. One answer per run
    id, at most ``max_fingerprints_per_day`` run ids: the same request again gets the
    cached reply (returned here: the same bytes reveal nothing new), another request
    under an answered run id is refused. None: compute it, then ``keep_fingerprint``
    (which checks again and records it) before it leaves."""
    if pol.require_secure_aggregation and not secure:
        raise Refused(SECAGG_REQUIRED)
    run = cfg.get(K.RUN_ID)
    if not isinstance(run, str) or not 0 < len(run) <= 128:
        raise Refused(BAD_RUN)
    with _releases(state_dir) as led:
        return _fingerprint_slot(pol, state_dir, led, run, request)


def _fingerprint_slot(pol: PolicyTable, state_dir, led: dict, run: str, request: str) -> dict | None:
    prev = led["fingerprints"].get(run_tag(run))
    if prev is not None:
        cached = ReleaseLedger(state_dir).reply_path(run)
        if prev["request"] != request or not cached.is_file():
            raise Refused(FINGERPRINT_REPEAT)
        return json.loads(cached.read_text())
    if started_today(led["fingerprints"], now()) >= pol.max_fingerprints_per_day:
        raise Refused(FINGERPRINT_BOUND)
    return None


def keep_fingerprint(pol: PolicyTable, state_dir, cfg: dict, request: str, reply: dict) -> None:
    """Record the run's answer (so a failed attempt spends no slot) and keep its reply
    for an identical repeat (0600); Refused if another process answered meanwhile."""
    run = cfg[K.RUN_ID]
    with _releases(state_dir) as led:
        if _fingerprint_slot(pol, state_dir, led, run, request) is not None:
            raise Refused(FINGERPRINT_REPEAT)
        write_private(ReleaseLedger(state_dir).reply_path(run), json.dumps(reply).encode())
        led["fingerprints"][run_tag(run)] = {"time": now(), "request": request}


def admit_evaluate(pol: PolicyTable, state_dir, cfg: dict, arrays: dict) -> int:
    """Raise Refused unless this is the one evaluation of the round's trained model,
    or the run's one final evaluation (a round after the last one trained)."""
    rnd = check_config(pol, cfg, K.MSG_EVALUATE)
    with PolicyState(state_dir, cfg[K.RUN_ID]).open() as st:
        latest = st["latest"]
        if st["closed"]:
            raise Refused(RUN_CLOSED)
        if latest == 0 or rnd < latest:
            raise Refused(EVAL_NOT_ALLOWED)
        _same_preprocess(st, cfg)
        if rnd == latest:
            if st["evals_left"] < 1:
                raise Refused(EVAL_NOT_ALLOWED)
            if model_hash(arrays) != st["trained"][str(rnd)]:
                raise Refused(EVAL_WRONG_MODEL)
            st["evals_left"] -= 1
        else:  # the final model: evaluated once, and then the run answers nothing more
            st["closed"] = True
    return rnd


def _closed_run(pol: PolicyTable, cfg: dict) -> tuple[int, str]:
    """The round config of a final-stage request (besides its model name): (round, run id)."""
    rest = {k: v for k, v in cfg.items() if k != K.CROSS_MODEL}
    return check_config(pol, rest, K.MSG_EVALUATE), rest[K.RUN_ID]


def admit_cross_site(pol: PolicyTable, state_dir, cfg: dict, arrays: dict) -> int:
    """Raise Refused unless the run's final evaluation is done, this model was not
    evaluated here before and the site's bound of cross-site models is not spent."""
    name = cfg.get(K.CROSS_MODEL)
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise Refused(bound_reason(K.CROSS_MODEL))
    rnd, run = _closed_run(pol, cfg)
    digest = model_hash(arrays)
    with PolicyState(state_dir, run).open() as st:
        if not st["closed"]:
            raise Refused(CROSS_NOT_FINAL)
        _same_preprocess(st, cfg)
        done = st.setdefault("cross_site", [])
        if digest in done:
            raise Refused(CROSS_REPEAT)
        if len(done) >= pol.max_cross_site_models:
            raise Refused(CROSS_BOUND)
        done.append(digest)
    return rnd


def admit_share_local(pol: PolicyTable, state_dir, cfg: dict) -> int:
    """Raise Refused unless the site consents to share its local-only model, the run's
    final evaluation is done and the model was not sent before in this run. Returns
    the run's last trained round: its local-only model is the only one that may leave
    (whatever round the request names), and only after ``claim_local_model``."""
    if not pol.share_local_model:
        raise Refused(NO_CONSENT)
    _, run = _closed_run(pol, cfg)
    with PolicyState(state_dir, run).open() as st:
        if not st["closed"]:
            raise Refused(CROSS_NOT_FINAL)
        if st.get("local_shared"):
            raise Refused(LOCAL_SHARED)
        st["local_shared"] = True
        return st["latest"]


def claim_local_model(state_dir, run: str, arrays: dict) -> None:
    """Record in the site-wide ledger that this local-only model leaves; Refused if
    these weights (by content hash) ever left before, under any run id."""
    digest = model_hash(arrays)
    with _releases(state_dir) as led:
        if digest in led["local_models"]:
            raise Refused(LOCAL_SENT_BEFORE)
        led["local_models"][digest] = {"run": run_tag(run), "time": now()}


def case_secret(state_dir, run: str) -> str:
    """The run's secret (made at the site, kept in its PolicyState, never sent) that
    orders its per-case lists: one order for every model of the run, so values pair
    up across models, and another order in every run, so positions name no case."""
    with PolicyState(state_dir, run).open() as st:
        return st.setdefault("case_order_secret", secrets.token_hex(32))


def outgoing_cases(pol: PolicyTable, cases: dict, secret: str) -> dict[str, list[float]]:
    """Per-case value lists (no case ids) of allow-listed metrics, only where the site
    opted in (``cross_site_per_case``) and lets its case count leave (a list's length
    is that count), each list in the order of the run's secret permutation."""
    if not pol.cross_site_per_case or not case_counts_allowed(pol) or not isinstance(cases, dict):
        return {}
    pat = _pattern(pol.metrics)
    out = {k: [float(x) for x in v] for k, v in cases.items()
           if isinstance(k, str) and pat.fullmatch(k) and isinstance(v, list)
           and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}
    if len({len(v) for v in out.values()}) > 1:  # not one value per case: nothing pairs up, none leaves
        return {}
    n = len(next(iter(out.values()), []))
    seed = int.from_bytes(hashlib.sha256(f"case-order/{secret}/{n}".encode()).digest(), "little")
    order = np.random.default_rng(seed).permutation(n)
    return {k: [v[i] for i in order] for k, v in out.items()}
