"""The site's answer to the plan's fingerprint query (issue 16).

The site worker, which reads the site's data, fingerprints it once its cache is
ready and writes the reply (aggregates only: the summable vector, suppressed
categorical counts, the summary row; never the per-case records) next to its
socket (keys.FINGERPRINT_FILE, 0600). The ClientApp shim answers the query
from that file, so it reads no image itself. With secure aggregation the vector
leaves only masked, in the federation's layout (fl_common.fingerprint_codec).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from fl_common import keys as K

log = logging.getLogger("fedvox.site")


def fingerprint_path(worker_socket: str | Path) -> Path:
    return Path(worker_socket).parent / K.FINGERPRINT_FILE


def write_fingerprint(datalist_path: str | Path, modality: str, site: str, out: str | Path) -> dict:
    """Fingerprint the site's datalist and write the reply atomically (0600)."""
    from imaging_core.io.atomic import write_bytes_atomic
    from imaging_core.plan.fingerprint import fingerprint_site
    fp = fingerprint_site(datalist_path, modality, site=site)
    reply = fp.to_reply()
    write_bytes_atomic(out, json.dumps(reply).encode(), mode=0o600)
    return reply


def fingerprint_in_background(datalist_path, modality: str, site: str, out: str | Path) -> threading.Thread:
    """The worker's startup does not wait for the fingerprint (a query waits instead)."""
    def run():
        t0 = time.perf_counter()
        try:
            write_fingerprint(datalist_path, modality, site, out)
            log.info("%s: fingerprint written in %.1f s", site, time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001 - the query then reports the site has none
            log.warning("%s: fingerprint failed: %s", site, e)
    t = threading.Thread(target=run, name="fedvox-fingerprint", daemon=True)
    t.start()
    return t


def read_fingerprint(path: str | Path, wait: float = 120.0) -> dict:
    """The reply the worker wrote (waiting up to ``wait`` s while it is being computed)."""
    path = Path(path)
    deadline = time.monotonic() + wait
    while not path.is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no fingerprint at {path}: the site worker has not written one")
        time.sleep(0.2)
    return json.loads(path.read_text())


def fingerprint_received(cfg: dict, rnd: int):
    """What the site signs for its masked fingerprint: the digest the server computes
    (checks.received of no model and the round config), and as the secure-aggregation
    ledger's model entry one of this run's own. No model was received: the empty
    model's entry would refuse every later run's plan stage, and once per run id and
    per day is the release ledger's bound (fl_client.policy.admit_fingerprint)."""
    import dataclasses
    import hashlib

    from fl_common.secagg.checks import received
    run = str(cfg.get(K.RUN_ID, ""))
    return dataclasses.replace(received({}, cfg, run, rnd),
                               model=hashlib.sha256(f"fedvox-fingerprint/{run}".encode()).digest())


# ----- the answer to one run's request, kept for an identical repeat (policy.admit_fingerprint)
def content_to_cache(content) -> dict:
    """A fingerprint reply's records as JSON (arrays and bytes in base64)."""
    import base64
    out: dict = {"arrays": {}, "configs": {}}
    for name in (K.REC_MASKED,):
        if name in content.array_records:
            out["arrays"][name] = {k: {"dtype": a.numpy().dtype.str, "shape": list(a.numpy().shape),
                                       "data": base64.b64encode(a.numpy().tobytes()).decode()}
                                   for k, a in content.array_records[name].items()}
    for name in (K.REC_SECAGG, K.REC_FINGERPRINT):
        if name in content.config_records:
            out["configs"][name] = {k: base64.b64encode(bytes(v)).decode()
                                    for k, v in content.config_records[name].items()}
    return out


def cached_content(cached: dict, info):
    """The RecordDict of a kept reply: the same bytes as the first answer."""
    import base64

    import numpy as np
    from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
    content = RecordDict({K.REC_INFO: info})
    for name, arrays in cached["arrays"].items():
        content[name] = ArrayRecord({k: Array(np.frombuffer(base64.b64decode(a["data"]), dtype=a["dtype"])
                                              .reshape(a["shape"]).copy()) for k, a in arrays.items()})
    for name, values in cached["configs"].items():
        content[name] = ConfigRecord({k: base64.b64decode(v) for k, v in values.items()})
    return content
