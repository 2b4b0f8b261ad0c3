"""Wall time of a real 3-round federation on loopback (tiny sites_example data,
3 sites, secure aggregation, the tiny UNet of test_federation): the figure the
overlap of held-out evaluation and local-only training is measured by.

    PYTHONPATH=<tree under test> python <tree>/tests/fl_server/time_federation_rounds.py [--rounds 3]

Run it once with the tree before a change and once after, on the same machine and
load: the ratio is the figure (absolute seconds depend on what else runs)."""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", default=None, help="copy the run directory here")
    a = ap.parse_args()
    from fl_common.config import example_federation_path
    from sites_example.generate import generate
    from tests.fl_server.test_federation import Federation
    with tempfile.TemporaryDirectory(prefix="fedvox-time-") as tmp:
        base = Path(tmp)
        generate(base / "data", zoom=0.7, cases=0.5, seed=0)
        src = example_federation_path().parent
        shutil.copytree(src / "sites", base / "sites")
        text = (src / "federation.toml").read_text()
        text = (text.replace("rounds = 3", f"rounds = {a.rounds}").replace("local_epochs = 2", "local_epochs = 1")
                .replace("channels = [8, 16, 32, 64]", "channels = [4, 8, 16]")
                .replace("strides = [2, 2, 2]", "strides = [2, 2]")
                .replace("patch_size = [32, 32, 32]", "patch_size = [24, 24, 24]")
                .replace("samples_per_case = 4", "samples_per_case = 2"))
        text = text.replace("[federation]\n", "[federation]\ntrain_timeout = 300.0\neval_timeout = 300.0\n"
                            "colluding_sites = 0\n", 1)
        (base / "federation.toml").write_text(text)
        fed = Federation(base / "work", {"fed": base / "federation.toml", "data": base / "data"})
        try:
            fed.start_server()
            fed.start_sites()
            t0 = time.monotonic()
            res = fed.run(timeout=900.0)
            wall = time.monotonic() - t0
        finally:
            fed.stop()
        if not res.ok:
            raise SystemExit(f"run failed: {res.status}: {res.details}")
        events = [json.loads(x) for x in (fed.run_dir / "events.jsonl").read_text().splitlines()]
        t = {(e["event"], e.get("round"), e.get("stage")): e["t"] for e in events}
        first = min(e["t"] for e in events)
        rounds = json.loads((fed.run_dir / "rounds.json").read_text())
        out = {"wall_s": round(wall, 1), "rounds": a.rounds,
               "round_start_s": {r: round(t[("round_start", r, None)] - first, 1) for r in range(1, a.rounds + 1)},
               "run_done_s": round(t[("run_done", None, None)] - first, 1),
               "round_seconds": [x.get("seconds") for x in rounds[1:]],
               "central_dice": [x.get("central/dice_fg_mean") for x in rounds]}
        print(json.dumps(out))
        if a.keep:
            shutil.copytree(fed.run_dir, a.keep, dirs_exist_ok=True)


if __name__ == "__main__":
    main()
