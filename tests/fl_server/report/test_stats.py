"""Paired bootstrap CIs on synthetic pairs with a known difference."""
from __future__ import annotations

import numpy as np
import pytest

from fl_server.report.stats import BETTER, SAME, WORSE, paired_bootstrap


def _pair(n, diff, seed, case_sd=0.2, noise_sd=0.03):
    rng = np.random.default_rng(seed)
    base = rng.normal(0.6, case_sd, n)  # large between-case spread, shared by both models
    return base + diff + rng.normal(0, noise_sd, n), base


def test_known_difference_is_found_and_named():
    a, b = _pair(30, 0.05, seed=1)
    r = paired_bootstrap(a, b)
    assert r["n"] == 30 and r["ci_low"] < 0.05 < r["ci_high"] and r["ci_low"] > 0
    assert r["verdict"] == BETTER
    assert paired_bootstrap(b, a)["verdict"] == WORSE
    # pairing matters: the between-case spread (0.2) would swamp 0.05 in an unpaired comparison
    assert r["ci_high"] - r["ci_low"] < 0.05
    # for HD95 lower is better: A's higher values are worse
    assert paired_bootstrap(a, b, higher_is_better=False)["verdict"] == WORSE


def test_no_difference_is_not_distinguishable_and_nan_pairs_dropped():
    a, b = _pair(25, 0.0, seed=2)
    a[3], b[7] = np.nan, np.nan
    r = paired_bootstrap(a, b)
    assert r["verdict"] == SAME and r["n"] == 23 and r["n_dropped"] == 2
    assert paired_bootstrap([0.5], [0.4])["verdict"] == SAME  # one case tells nothing
    few = paired_bootstrap([0.9, 0.8, 0.85, 0.95], [0.5, 0.4, 0.45, 0.5])  # 4 cases: no verdict
    assert few["too_few"] and few["verdict"] == SAME and few["ci_low"] > 0
    with pytest.raises(ValueError):
        paired_bootstrap([1, 2], [1, 2, 3])


def test_interval_matches_scipy_and_covers_the_true_difference():
    from scipy.stats import bootstrap
    a, b = _pair(20, 0.02, seed=3)
    ours = paired_bootstrap(a, b, n_boot=20_000)
    ref = bootstrap((a - b,), np.mean, n_resamples=20_000, method="percentile", random_state=0)
    assert ours["ci_low"] == pytest.approx(ref.confidence_interval.low, abs=2e-3)
    assert ours["ci_high"] == pytest.approx(ref.confidence_interval.high, abs=2e-3)
    hits = 0
    for s in range(200):
        x, y = _pair(30, 0.02, seed=100 + s)
        r = paired_bootstrap(x, y, n_boot=1000, seed=s)
        hits += r["ci_low"] <= 0.02 <= r["ci_high"]
    assert 0.88 <= hits / 200 <= 0.99  # a 95% interval covers the truth about 95% of the time


def test_report_states_the_paired_verdict(run_dir):
    import json
    from fl_server.report import make_report
    a, b = _pair(12, 0.1, seed=5)
    per_case = []
    for i in range(12):
        for model, kind, v in (("global (best)", "global", a[i]), ("pooled (baseline)", "baseline", b[i])):
            per_case.append({"model": model, "kind": kind, "eval_set": "held-out", "case_id": f"c{i:02d}",
                             "dice_1": v, "hd95_1": 10 - 10 * v, "dice_2": 0.5, "hd95_2": float("nan"),
                             "missed_1": 0, "missed_2": 1})
    out = make_report(run_dir, per_case=per_case, quiet=True, tracking=False)
    md = (out / "report.md").read_text()
    def line(metric):
        return next(x for x in md.splitlines() if x.startswith(f"| pooled (baseline) | {metric} |"))
    assert line("Dice: organ").startswith("| pooled (baseline) | Dice: organ | 12 | +0.0")
    assert line("Dice: organ").endswith("| better |")
    assert line("HD95 (mm): organ").endswith("| better |")  # lower HD95: better too
    assert "| -0.9 | [-1.0, -0.8] |" in line("HD95 (mm): organ")
    assert "| pooled (baseline) | Dice: lesion | 12 | +0.000" in md and "| not distinguishable |" in md
    assert "| pooled (baseline) | HD95 (mm): lesion | 0 |" in md  # no HD95 pairs: n 0, not a verdict
    assert line("HD95 (mm): lesion").endswith("| not distinguishable (too few cases to tell) |")
    assert json.loads((out / "summary.json").read_text())["rows"]
