"""The names both federation sides agree on: record names, config keys inside
them, message types, node-config keys and metric prefixes.

A key is spelt here once; client_app, the server's round loop, aggregation and
the benches import it instead of repeating the string.
"""
from __future__ import annotations

# ----- record names inside a Message's RecordDict -----------------------------
REC_CONFIG = "config"        # ConfigRecord: the round config the server sends
REC_ARRAYS = "arrays"        # ArrayRecord: the global weights, one Array per tensor
REC_INFO = "info"            # ConfigRecord: who replied ({SITE: name})
REC_METRICS = "metrics"      # MetricRecord: the scalars a site reports
REC_DELTA = "delta"          # ArrayRecord: an unmasked update (secure aggregation off)
REC_MASKED = "masked"        # ArrayRecord: a masked update
REC_SECAGG = "secagg"        # ConfigRecord: a secure-aggregation payload
REC_CASES = "cases"          # MetricRecord: per-case value lists of a cross-site evaluation (where allowed)
REC_FINGERPRINT = "fingerprint"  # ConfigRecord: a site's fingerprint summary + categorical counts (JSON)
REC_REFUSED = "refused"      # ConfigRecord: in a batched cross-site reply, model index -> the policy's reason

# ----- keys inside those records ----------------------------------------------
SERVER_ROUND = "server-round"
RUN_ID = "run-id"
LR = "lr"
SITE = "site"
NUM_EXAMPLES = "num-examples"
FLAT = "flat"                # the one Array of a delta record
VECTOR = "vector"            # the one Array of a masked record
SESSION = "session"
PAYLOAD = "payload"
CLIPPED = "clipped"          # a round's summed clip events (never one site's: that is masked)
CROSS_MODEL = "cross-model"  # round config of a cross-site evaluation: the model's name in the matrix
PREPROCESS = "preprocess"    # round config: the run's [preprocess] table (canonical JSON), covered by the signed digest
CROSS_MODELS = "cross-models"  # a batched one: the names, model i in records arrays.<i> -> metrics.<i>, cases.<i>

# ----- message types ----------------------------------------------------------
MSG_TRAIN = "train"
MSG_EVALUATE = "evaluate"
MSG_QUERY = "query"          # query.<action>: secure-aggregation setup stages
SECAGG_ADVERTISE = "advertise"
SECAGG_SHARE = "share"
CROSS_SITE = "cross_site"    # evaluate.cross_site: other models on the site's validation cases (final stage)
LOCAL_MODEL = "local_model"  # query.local_model: a consenting site's local-only model (final stage)
PLAN_FINGERPRINT = "fingerprint"        # query.fingerprint: the site's fingerprint (vector masked)
PLAN_REVEAL = "fingerprint_reveal"      # query.fingerprint_reveal: unmask the summed fingerprint

# ----- the SuperNode's node config (written by the site launcher) -------------
NODE_SITE_NAME = "site-name"
NODE_WORKER_SOCKET = "worker-socket"
NODE_ROSTER = "roster"
NODE_ROSTER_FINGERPRINT = "roster-fingerprint"  # the site's own pin (KEYS/trust.toml)
NODE_STATE_DIR = "state-dir"
NODE_AUTH_KEY = "auth-key"
NODE_AUDIT_DIR = "audit-dir"
NODE_SITE_CONFIG = "site-config"  # the site's own site.toml: its [policy] is read for every message
NODE_COLLUDING_SITES = "secagg-colluding-sites"  # the site's own bound on sites colluding with the server
FINGERPRINT_FILE = "fingerprint.json"  # in the worker's work dir (next to its socket): what a query answers
PREPROCESS_FILE = "preprocess.json"  # in the worker's work dir: the site's own [preprocess] ("auto" or the table)
AUDIT_FILE = "outgoing.jsonl"  # in audit-dir: one JSON line per reply, what left the site

# ----- error replies of a site (Flower Message Error codes; Flower's own are < 100) -----
ERR_REFUSED = 1400           # the site's [policy] does not allow this request
ERR_BAD_REQUEST = 1401       # the message lacks a record or a key, or has the wrong type
ERR_WORKER = 1402            # the site worker failed (details stay in the site's logs)
ERR_INTERNAL = 1403          # anything else at the site (details stay in its logs)

# ----- metric prefixes in the run record --------------------------------------
CENTRAL = "central/"         # the coordinator's held-out evaluation of the global model
TRAIN = "train/"             # what a site's train reply reported
VAL = "val/"                 # what a site's evaluate reply reported
GLOBAL = "global/"           # (inside VAL) the global model on the site's validation cases
LOCAL = "local/"             # (inside VAL) the site's local-only model on them

# ----- the site worker's Unix-socket API --------------------------------------
WORKER_API_VERSION = 1
WORKER_MAX_MESSAGE = 1 << 30  # a 100M-parameter model in float32 fits


def preprocess_wire(table: dict) -> str:
    """The PREPROCESS value: one canonical text for a table, so equal tables are equal bytes."""
    import json
    return json.dumps(table, sort_keys=True, separators=(",", ":"))


def query_type(action: str) -> str:
    """The message type of a secure-aggregation setup stage (or another query)."""
    return f"{MSG_QUERY}.{action}"


def batch_record(record: str, i: int) -> str:
    """The record of model ``i`` in a batched cross-site message (``arrays.0``, ``metrics.0``, ...)."""
    return f"{record}.{i}"


def evaluate_type(action: str) -> str:
    """The message type of a named evaluate action (Flower's ``@app.evaluate(action)``)."""
    return f"{MSG_EVALUATE}.{action}"
