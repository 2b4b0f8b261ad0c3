"""`fedvox export RUN`: a federated run's global model as a signed MONAI bundle.

The data contract comes from the federation config the run used; the
provenance (run id, rounds, strategy, secure-aggregation mode, metrics) from
the run records. Sites appear in the bundle only as pseudonyms ("site-1".."site-N",
in the federation config's order); the mapping is written to
``RUN/site_pseudonyms.json`` (0600), which stays with the coordinator.

Signing: with the coordinator's dedicated bundle-signing key
(``<provision>/server/bundle_signing.key``; sites pin its public half, shipped
in every kit), never with the federation CA key, which is refused. The weights
are read only if their SHA-256 is the one the run record recorded.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
from collections import Counter
from pathlib import Path

from imaging_core.errors import ImagingError

from .records import PSEUDONYMS, RunRecord

__all__ = ["PSEUDONYMS", "data_contract", "export_run", "site_pseudonyms"]


def site_pseudonyms(run_dir: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """Real site name -> "site-N", stable across exports (new sites get the next numbers)."""
    return RunRecord.open(run_dir).pseudonyms(names)


def data_contract(fed) -> dict:
    """What an input must go through, from the federation config (imaging_core.bundle.contract)."""
    mods = [s.modality for s in fed.sites]
    default = fed.coordinator.modality if fed.coordinator is not None else Counter(mods).most_common(1)[0][0]
    pre = fed.preprocess.model_dump()
    used = sorted(set(mods) | {default})
    pre["intensity"] = {m: pre["intensity"][m] for m in used if m in pre["intensity"]}
    return {**pre, "modality": default, "labels": {str(k): v for k, v in fed.labels.items()}, "in_channels": 1,
            "roi_size": list(fed.sampling.patch_size), "overlap": fed.train.overlap,
            "sw_batch_size": fed.train.sw_batch_size}


def _finite(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not
            (isinstance(v, float) and not math.isfinite(v))}


def signing_key(key: str | os.PathLike | None, provision: str | os.PathLike | None) -> Path | None:
    """The bundle-signing key to use: ``key``, else the provision directory's
    ``server/`` bundle key. Refused (ImagingError) if it is the federation CA key,
    compared with the CA certificate of ``provision`` or, without one, a
    ``ca.crt`` beside the key (where provisioning keeps them both)."""
    from fl_common.crypto.signing import MANIFEST_SIGNATURES as SIG
    from fl_common.kit import SERVER_BUNDLE_KEY
    server = Path(provision) / "server" if provision is not None else None
    if key is None:
        if server is None:
            return None
        key = server / SERVER_BUNDLE_KEY
        if not key.is_file():
            raise ImagingError(key, "missing: this provision directory has no bundle-signing key "
                               "(re-provision, or pass --key)")
    key = Path(key)
    try:
        priv = SIG.load_private(key)
    except (OSError, ValueError) as e:
        raise ImagingError(key, f"not a usable signing key ({e})") from None
    ca = server / "ca.crt" if server is not None else key.parent / "ca.crt"
    if ca.is_file() and SIG.same_key(priv, ca):
        raise ImagingError(key, f"is the federation CA key (its public half is {ca}'s); sign bundles "
                           f"with the dedicated bundle-signing key, server/{SERVER_BUNDLE_KEY}")
    return key


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, which: str = "best",
               key: str | os.PathLike | None = None, federation_path: str | os.PathLike | None = None,
               data_base: str | os.PathLike | None = None, overwrite: bool = False,
               version: str | None = None, provision: str | os.PathLike | None = None) -> Path:
    """Export the run's ``which`` ("best" or "final") global model as a bundle in
    ``out_dir``, signed with ``key`` or the bundle-signing key of ``provision``
    (see ``signing_key``; neither: unsigned, which sites refuse unless told to
    allow it). The federation config and data base default to what run.json
    records. Returns ``out_dir``."""
    from imaging_core.bundle.export import export_bundle
    from fl_common.config import load_federation

    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', got {which!r}")
    key = signing_key(key, provision)  # refused before any work
    run = RunRecord.open(run_dir)
    info = run.info
    fpath = federation_path or run.federation_path
    if not fpath:
        raise ImagingError(run.dir / "run.json", "does not record the federation config "
                           "(federation_path); pass it explicitly (--federation)")
    fed = load_federation(fpath, data_base=data_base or run.data_base)  # config reads: here only
    state = run.load_model(which)  # data only, and the file the run recorded
    if isinstance(state, dict) and "net" in state and isinstance(state["net"], dict):
        state = state["net"]

    names = [s.name for s in fed.sites]
    names += [n for n in run.site_names if n not in names]
    pseud = run.pseudonyms(names)
    r = run.model_round(which)
    per_site = run.site_metrics_after(r)
    fl = fed.federation
    provenance = {
        "run_id": info.get("run_id"), "federation": info.get("federation", fl.name),
        "rounds": info.get("rounds"), "rounds_completed": len([x for x in run.ok_rounds() if x > 0]),
        "strategy": info.get("strategy", fl.strategy),
        "secure_aggregation": info.get("secure_aggregation"),
        "min_sites": info.get("min_sites"), "best_metric": info.get("best_metric"),
        "which": which, "round": r, "status": info.get("status"),
        "sites": [pseud[n] for n in names if n in {s.name for s in fed.sites}],
        "metrics": {"held_out": _finite(run.central(r)),
                    "sites": {pseud.get(s, s): _finite(m) for s, m in sorted(per_site.items(),
                                                                           key=lambda t: pseud.get(t[0], t[0]))}},
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    model_cfg = dict(info.get("model") or fed.model.model_dump())
    ver = version or f"1.0.{max(r, 0)}"
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    return export_bundle(state, model_cfg, data_contract(fed), provenance, out_dir,
                         signing_key_path=key, version=ver, overwrite=overwrite,
                         signature_scheme=MANIFEST_SIGNATURES)
