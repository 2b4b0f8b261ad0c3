"""Secure-aggregation protocol cost, in process (no Flower, no network).

For each configuration (virtual sites x float32 parameters) it runs setup
(S1 advertise, S2 share) and one round (T mask, E reveal + unmask) of
fl_client.secagg with real keys, state files and shares, and measures CPU time
per site and at the server, next to the reference: the plain float32 weighted
sum the server does without masking. Upload bytes per site are compared with
the plain float32 vector. The unmasked mean is checked against the plaintext
weighted mean.

    python bench/bench_secagg.py [--configs 10x1000000,50x1000000,10x5000000]
                                 [--drop 0]

Last line: one JSON object with every figure and the overhead ratios.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fl_client.secagg import SiteSecAgg  # noqa: E402
from fl_common.crypto import pki as crypto  # noqa: E402
from fl_common.secagg.checks import received  # noqa: E402
from fl_server.secagg import ServerSecAgg  # noqa: E402


def cpu(fn, *args):
    t = time.process_time()
    out = fn(*args)
    return out, time.process_time() - t


def run_config(n_sites: int, n_params: int, drop: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    names = [f"site-{i:03d}" for i in range(n_sites)]
    keys = {s: crypto.generate_enrollment_key() for s in names}
    roster = {s: crypto.enrollment_public_openssh(k) for s, k in keys.items()}
    weights = {s: float(rng.integers(10, 500)) for s in names}
    dropped = set(names[1:1 + drop])  # lost during training (before their T reply)
    t_site = {s: {"setup": 0.0, "mask": 0.0, "reveal": 0.0} for s in names}
    t_srv = {"setup": 0.0, "train_requests": 0.0, "collect_masked": 0.0,
             "reveal_requests": 0.0, "unmask": 0.0}
    up_bytes, manifest_bytes, reveal_bytes = [], [], []

    with tempfile.TemporaryDirectory(prefix="bench-secagg-") as tmp:
        sites = {s: SiteSecAgg(s, "bench", keys[s], roster, Path(tmp) / s) for s in names}
        server = ServerSecAgg("bench", roster, clip_range=4.0, max_weight=1000.0)
        # S1 + S2
        adverts = {}
        for s in names:
            adverts[s], dt = cpu(sites[s].advertise)
            t_site[s]["setup"] += dt
        roster_msg, dt = cpu(server.collect_adverts, adverts)
        t_srv["setup"] += dt
        bundles = {}
        for s in names:
            bundles[s], dt = cpu(sites[s].receive_roster_and_share, roster_msg)
            t_site[s]["setup"] += dt
        _, dt = cpu(server.collect_share_bundles, bundles)
        t_srv["setup"] += dt

        # T: mask one site at a time and hand it to the server at once, so only
        # one masked vector is alive (as the server sums them as they arrive)
        got = received({"w": np.zeros(4, np.float32)}, {"round": 1, "seed": seed}, "bench", 1)
        reqs, dt = cpu(lambda r: server.train_requests(r, received=got.digest), 1)
        t_srv["train_requests"] += dt
        plain_num = np.zeros(n_params, np.float64)
        plain_w = 0.0
        plain_t = 0.0
        acc32 = np.zeros(n_params, np.float32)
        for s in names:
            delta = rng.normal(0.0, 0.05, n_params).astype(np.float32)
            if s in dropped:
                continue
            up, dt = cpu(lambda *a: sites[s].mask(*a, received=got), 1, delta, weights[s], reqs[s])
            t_site[s]["mask"] += dt
            up_bytes.append(up.vector.nbytes + len(up.payload))
            manifest_bytes.append(len(up.payload))
            _, dt = cpu(server.collect_masked, 1, {s: (up.vector, up.payload)})
            t_srv["collect_masked"] += dt
            # the reference: the server's plain float32 weighted sum
            t0 = time.process_time()
            acc32 += np.float32(weights[s]) * delta
            plain_t += time.process_time() - t0
            plain_num += weights[s] * delta.astype(np.float64)
            plain_w += weights[s]
            del up, delta
        t0 = time.process_time()
        plain_mean = acc32 / np.float32(plain_w)
        plain_t += time.process_time() - t0

        # E
        rreqs, dt = cpu(server.reveal_requests, 1)
        t_srv["reveal_requests"] += dt
        replies = {}
        for s, payload in rreqs.items():
            replies[s], dt = cpu(sites[s].reveal, 1, payload)
            t_site[s]["reveal"] += dt
            reveal_bytes.append(len(replies[s]))
        res, dt = cpu(server.unmask, 1, replies)
        t_srv["unmask"] += dt

    ref = plain_num / plain_w
    err = float(np.abs(res.mean - ref).max())
    assert err <= res.tolerance, (err, res.tolerance)
    alive = [s for s in names if s not in dropped]
    site_round = [t_site[s]["mask"] + t_site[s]["reveal"] for s in alive]
    srv_round = sum(v for k, v in t_srv.items() if k != "setup")
    return {
        "sites": n_sites, "params": n_params, "dropped": len(dropped),
        "threshold": server.threshold,
        "site_setup_cpu_s": float(np.mean([t_site[s]["setup"] for s in names])),
        "site_mask_cpu_s": float(np.mean([t_site[s]["mask"] for s in alive])),
        "site_reveal_cpu_s": float(np.mean([t_site[s]["reveal"] for s in alive])),
        "site_round_cpu_s": float(np.mean(site_round)),
        "site_round_cpu_max_s": float(np.max(site_round)),
        "server_setup_cpu_s": t_srv["setup"],
        "server_round_cpu_s": srv_round,
        "server_unmask_cpu_s": t_srv["unmask"],
        "server_collect_cpu_s": t_srv["collect_masked"],
        "plain_sum_cpu_s": plain_t,
        "server_vs_plain_sum": srv_round / plain_t if plain_t else None,
        "site_upload_bytes": int(np.mean(up_bytes)),
        "plain_upload_bytes": 4 * n_params,
        "upload_ratio": float(np.mean(up_bytes)) / (4 * n_params),
        "manifest_bytes": int(np.mean(manifest_bytes)),
        "reveal_reply_bytes": int(np.mean(reveal_bytes)),
        "max_abs_err": err,
        "plain_f32_err": float(np.abs(plain_mean - ref).max()),
        "tolerance": res.tolerance,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="10x1000000,50x1000000,10x5000000",
                    help="comma-separated SITESxPARAMS")
    ap.add_argument("--drop", type=int, default=0,
                    help="also run each config with this many sites lost before T")
    args = ap.parse_args()
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    results = []
    for n_sites, n_params in configs:
        for drop in ([0, args.drop] if args.drop else [0]):
            t0 = time.perf_counter()
            r = run_config(n_sites, n_params, drop)
            r["wall_s"] = time.perf_counter() - t0
            results.append(r)
            print(f"  done {n_sites} sites x {n_params:,} params, {drop} dropped "
                  f"({r['wall_s']:.1f} s wall)", file=sys.stderr, flush=True)

    hdr = (f"{'sites':>5} {'params':>9} {'drop':>4} | {'site setup':>10} {'site mask':>9} "
           f"{'site reveal':>11} | {'srv setup':>9} {'srv round':>9} {'unmask':>7} | "
           f"{'plain sum':>9} {'srv/plain':>9} | {'upload':>7} {'max err':>9}")
    print("fedvox secure aggregation, CPU seconds (per site: mean over sites)")
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(f"{r['sites']:>5} {r['params']:>9,} {r['dropped']:>4} | "
              f"{r['site_setup_cpu_s']:>10.3f} {r['site_mask_cpu_s']:>9.3f} "
              f"{r['site_reveal_cpu_s']:>11.3f} | {r['server_setup_cpu_s']:>9.3f} "
              f"{r['server_round_cpu_s']:>9.3f} {r['server_unmask_cpu_s']:>7.3f} | "
              f"{r['plain_sum_cpu_s']:>9.3f} {r['server_vs_plain_sum']:>9.1f} | "
              f"{r['upload_ratio']:>6.4f}x {r['max_abs_err']:>9.2e}")
    print(json.dumps({"bench": "secagg_protocol_cpu", "reference": "plain float32 weighted sum",
                      "results": results}))


if __name__ == "__main__":
    main()
