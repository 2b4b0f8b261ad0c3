"""`fedvox export RUN`: a federated run's global model as a signed MONAI bundle.

The data contract comes from the federation config the run used; the
provenance (run id, rounds, strategy, secure-aggregation mode, metrics) from
the run records. Sites appear in the bundle only as pseudonyms ("site-1".."site-N",
in the federation config's order); the mapping is written to
``RUN/site_pseudonyms.json`` (0600), which stays with the coordinator.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from collections import Counter
from pathlib import Path

from imaging_core.errors import ImagingError

from .records import read_json

PSEUDONYMS = "site_pseudonyms.json"


_read = read_json  # one reader for run-directory files (records.py)


def site_pseudonyms(run_dir: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """Real site name -> "site-N", stable across exports (new sites get the next numbers)."""
    from .records import write_json
    path = Path(run_dir) / PSEUDONYMS
    mapping = _read(path, {}) if path.exists() else {}
    n = len(mapping)
    for s in names:
        if s not in mapping:
            n += 1
            mapping[s] = f"site-{n}"
    write_json(path, mapping)
    os.chmod(path, 0o600)  # the key to re-identify sites: coordinator only
    return mapping


def data_contract(fed: dict) -> dict:
    """What an input must go through, from the federation config (imaging_core.bundle.contract)."""
    mods = [s["modality"] for s in fed["sites"]]
    default = fed["coordinator"]["modality"] if "coordinator" in fed else Counter(mods).most_common(1)[0][0]
    pre = fed["preprocess"]
    used = sorted(set(mods) | {default})
    return {"orientation": pre.get("orientation", "RAS"), "pixdim": list(pre["pixdim"]),
            "intensity": {m: dict(pre["intensity"][m]) for m in used if m in pre["intensity"]},
            "modality": default, "crop_foreground": bool(pre.get("crop_foreground", True)),
            "foreground_threshold": float(pre.get("foreground_threshold", 0.05)),
            "margin": int(pre.get("margin", 0)),
            "labels": {str(k): v for k, v in fed["labels"].items()}, "in_channels": 1,
            "roi_size": list(fed["sampling"]["patch_size"]),
            "overlap": float(fed["train"].get("overlap", 0.5)),
            "sw_batch_size": int(fed["train"].get("sw_batch_size", 4))}


def _strip(row: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}


def _finite(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not
            (isinstance(v, float) and not math.isfinite(v))}


def model_round(info: dict, rounds: list[dict], which: str) -> int:
    """The round after which the exported global model was taken."""
    ok = [r["round"] for r in rounds if r.get("status", "ok") == "ok"]
    last = max(ok) if ok else 0
    if which == "final":
        return last
    br = info.get("best_round")
    return int(br) if br is not None else last


def site_metrics_for(run_dir: Path, r: int, last: int, sites: list[dict]) -> dict[str, dict]:
    """Each site's validation metrics ("global/..." and "local/...") for the global
    model after round ``r``.

    A round-``t`` site row evaluates the global model the round *started* from
    (after round t-1) and the local-only model after t rounds, so for r < last
    the local-only figures are one round further; the final evaluation
    (final_sites.json) has both models after the last round.
    """
    if r >= last:
        fin = _read(run_dir / "final_sites.json", {"sites": []})
        return {row["site"]: {k: v for k, v in row.items() if k != "site"} for row in fin.get("sites", [])}
    out = {}
    for row in sites:
        if row.get("round") == r + 1:
            out[row["site"]] = {**_strip(row, "val/")}
    return out


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, which: str = "best",
               key: str | os.PathLike | None = None, federation_path: str | os.PathLike | None = None,
               data_base: str | os.PathLike | None = None, overwrite: bool = False,
               version: str | None = None) -> Path:
    """Export ``RUN/global_{which}.pt`` as a bundle in ``out_dir``; ``key`` signs it
    (the federation CA key ``server/ca.key``, PEM or OpenSSH). Returns ``out_dir``."""
    from imaging_core.bundle.export import export_bundle
    from imaging_core.train.checkpoint import load_checkpoint
    from .config import load_federation

    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', got {which!r}")
    run_dir = Path(run_dir)
    info = _read(run_dir / "run.json")
    rounds = _read(run_dir / "rounds.json", [])
    sites = _read(run_dir / "sites.json", [])
    fpath = federation_path or info.get("federation_path")
    if not fpath:
        raise ImagingError(run_dir / "run.json", "does not record the federation config "
                           "(federation_path); pass it explicitly (--federation)")
    fed = load_federation(fpath, data_base=data_base)
    ckpt = run_dir / f"global_{which}.pt"
    if which == "best" and not ckpt.exists() and (run_dir / "global_final.pt").exists():
        raise ImagingError(ckpt, "missing (no round improved the held-out metric?); export --which final")
    state = load_checkpoint(ckpt)
    if isinstance(state, dict) and "net" in state and isinstance(state["net"], dict):
        state = state["net"]

    names = [s["name"] for s in fed["sites"]]
    names += sorted({r["site"] for r in sites if r.get("site") not in names})
    pseud = site_pseudonyms(run_dir, names)
    ok = [r["round"] for r in rounds if r.get("status", "ok") == "ok"]
    last = max(ok) if ok else 0
    r = model_round(info, rounds, which)
    central = next((row for row in rounds if row.get("round") == r), {})
    per_site = site_metrics_for(run_dir, r, last, sites)
    fl = fed["federation"]
    provenance = {
        "run_id": info.get("run_id"), "federation": info.get("federation", fl.get("name")),
        "rounds": info.get("rounds"), "rounds_completed": len([x for x in ok if x > 0]),
        "strategy": info.get("strategy", fl.get("strategy")),
        "secure_aggregation": info.get("secure_aggregation"),
        "min_sites": info.get("min_sites"), "best_metric": info.get("best_metric"),
        "which": which, "round": r, "status": info.get("status"),
        "sites": [pseud[n] for n in names if n in {s["name"] for s in fed["sites"]}],
        "metrics": {"held_out": _finite(_strip(central, "central/")),
                    "sites": {pseud.get(s, s): _finite(m) for s, m in sorted(per_site.items(),
                                                                           key=lambda t: pseud.get(t[0], t[0]))}},
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    model_cfg = dict(info.get("model") or fed["model"])
    ver = version or f"1.0.{max(r, 0)}"
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    return export_bundle(state, model_cfg, data_contract(fed), provenance, out_dir,
                         signing_key_path=key, version=ver, overwrite=overwrite,
                         signature_scheme=MANIFEST_SIGNATURES)


def export_main(argv=None) -> int:
    """`fedvox export RUN --out DIR [--which best|final] [--key KEY] [--federation TOML]`."""
    import argparse
    ap = argparse.ArgumentParser(prog="fedvox export")
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--which", choices=("best", "final"), default="best")
    ap.add_argument("--key", default=None, help="federation signing key (PEM or OpenSSH), e.g. server/ca.key")
    ap.add_argument("--federation", default=None, help="federation TOML (if run.json does not record it)")
    ap.add_argument("--data-base", default=None)
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    out = export_run(a.run, a.out, a.which, a.key, a.federation, a.data_base, a.overwrite)
    print(out)
    return 0
