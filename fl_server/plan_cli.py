"""`fedvox plan` and `fedvox check` (registered by fl_server.cli; the work is in fl_server.plan)."""
from __future__ import annotations

import json

from fl_common.exit_codes import REFUSED


def _cmd_check(a) -> int:
    from fl_server.plan import run_check
    from fl_server.records import RunRecord
    from imaging_core.plan.harmonise import HarmonisationRefused
    rec = RunRecord(a.run_dir) if a.run_dir else None
    try:
        res = run_check(a.federation, a.data_base, strict=a.strict, record=rec)
    except HarmonisationRefused as e:
        print(f"fedvox check: {e}")
        for f in e.flags:
            print(f.line())
        return REFUSED
    print(res["text"])
    return 0


def _cmd_plan(a) -> int:
    from fl_server.plan import run_plan
    from imaging_core.plan.harmonise import HarmonisationRefused
    try:
        plan, harm = run_plan(a.federation, a.run_dir, a.memory_gb, a.data_base, strict=a.strict)
    except HarmonisationRefused as e:
        print(f"fedvox plan: {e}")
        return REFUSED
    print(harm["text"])
    print(json.dumps({k: plan[k] for k in ("preprocess", "sampling", "model")}, indent=1))
    for k, why in plan["reasons"].items():
        print(f"{k}: {why}")
    print(f"plan written to {a.run_dir}/plan.json")
    return 0


def add_plan_commands(cmd) -> None:
    """Register the two subcommands with ``cmd(name, fn, help)`` of fl_server.cli."""
    p = cmd("check", _cmd_check, "harmonisation check of a federation's sites (summary table + flags)")
    p.add_argument("--federation", required=True, help="federation TOML")
    p.add_argument("--data-base", default=None, help="base of relative site data roots")
    p.add_argument("--run-dir", default=None, help="also write harmonisation.json into this run directory")
    p.add_argument("--strict", action="store_true", help="refuse (exit 4) when any flag is raised")
    p = cmd("plan", _cmd_plan, "fingerprint the sites, derive the preprocessing plan, write plan.json")
    p.add_argument("--federation", required=True, help="federation TOML")
    p.add_argument("--data-base", default=None, help="base of relative site data roots")
    p.add_argument("--run-dir", required=True, help="run directory (plan.json and harmonisation.json written)")
    p.add_argument("--memory-gb", type=float, required=True,
                   help="training memory per site (GPU memory, or CPU RAM for CPU training) the patch must fit")
    p.add_argument("--strict", action="store_true", help="refuse (exit 4) when any flag is raised")


__all__ = ["add_plan_commands"]
