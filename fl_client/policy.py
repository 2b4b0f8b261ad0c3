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
final stage is no open evaluation oracle; the local-only model leaves once,
and only with ``share_local_model = true`` (the site's consent).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from fl_common import keys as K
from fl_common.config import PolicyTable, read_site_file


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
    return rnd


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
        tag = hashlib.sha256(run_id.encode()).hexdigest()[:24]  # the server's string never names a file
        self.path = self.dir / f"run-{tag}.json"

    @contextlib.contextmanager
    def open(self):
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = json.loads(self.path.read_text()) if self.path.exists() else \
                {"latest": 0, "trained": {}, "evals_left": 0, "closed": False}
            yield st
            self._write(st)
        finally:
            os.close(fd)

    def _write(self, st: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(st, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


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
        # a replayed round (server restart) trains the same model again and may be evaluated again
        st["trained"][str(rnd)], st["latest"], st["evals_left"] = digest, rnd, 1
    return rnd


def admit_fingerprint(pol: PolicyTable, secure: bool) -> None:
    """The plan's fingerprint query: its histogram vector leaves only masked,
    like an update, unless the site itself opted out of secure aggregation."""
    if pol.require_secure_aggregation and not secure:
        raise Refused(SECAGG_REQUIRED)


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
        done = st.setdefault("cross_site", [])
        if digest in done:
            raise Refused(CROSS_REPEAT)
        if len(done) >= pol.max_cross_site_models:
            raise Refused(CROSS_BOUND)
        done.append(digest)
    return rnd


def admit_share_local(pol: PolicyTable, state_dir, cfg: dict) -> int:
    """Raise Refused unless the site consents to share its local-only model, the run's
    final evaluation is done and the model was not sent before in this run."""
    if not pol.share_local_model:
        raise Refused(NO_CONSENT)
    rnd, run = _closed_run(pol, cfg)
    with PolicyState(state_dir, run).open() as st:
        if not st["closed"]:
            raise Refused(CROSS_NOT_FINAL)
        if st.get("local_shared"):
            raise Refused(LOCAL_SHARED)
        st["local_shared"] = True
    return rnd


def outgoing_cases(pol: PolicyTable, cases: dict) -> dict[str, list[float]]:
    """Per-case value lists (no case ids) of allow-listed metrics, only where the
    site opted in (``cross_site_per_case``)."""
    if not pol.cross_site_per_case or not isinstance(cases, dict):
        return {}
    pat = _pattern(pol.metrics)
    return {k: [float(x) for x in v] for k, v in cases.items()
            if isinstance(k, str) and pat.fullmatch(k) and isinstance(v, list)
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}
