"""`fedvox export RUN`: a federated run's global model as a signed MONAI bundle.

The data contract comes from the federation config the run used; the
provenance (run id, rounds, strategy, secure-aggregation mode, metrics) from
the run records. Sites appear in the bundle only as pseudonyms ("site-1".."site-N",
in the federation config's order); the mapping is written to
``RUN/site_pseudonyms.json`` (0600), which stays with the coordinator.

Signing: with the coordinator's dedicated bundle-signing key
(``<provision>/server/bundle_signing.key``; sites pin its public half, shipped
in every kit), never with the federation CA key, which is refused. The weights
are read only if their SHA-256 is the one the run record recorded; for a signed
bundle, the one the run's manifest records under the coordinator's run-record
key (``<provision>/server/run_record.pub``, or ``run_record.pub`` beside
``--key``; fl_server.record_manifest), so whoever can write the run directory
cannot get a swapped model signed. ``allow_unsigned_run`` exports a run that
has no manifest (written before run records were signed), loudly; a manifest
that does not verify is refused regardless. An unsigned bundle checks only
run.json's hashes: sites refuse it unless told to allow it.

The bundle is the evaluated pipeline: the preprocessing, sliding window and
post-processing chain the run evaluated with (run.json "postprocess"), the
run's plan when it has one (RunRecord.plan), and the held-out figures with the space
they were measured in (run.json "evaluation_space"). ``postprocess="auto"``
ships the chain chosen from the run's validation metrics instead
(imaging_core.inference.choose_postprocess: keep the largest component of a
class only where it raised the sites' validation Dice); either way the decision
is written to ``RUN/postprocess_decision.json`` and into the bundle's provenance.
"""
from __future__ import annotations

import datetime as _dt
import math
import os
import sys
from collections import Counter
from pathlib import Path

from imaging_core.errors import ImagingError

from .records import PSEUDONYMS, RunRecord

__all__ = ["PSEUDONYMS", "data_contract", "export_run", "postprocess_decision", "site_pseudonyms"]

DECISION_FILE = "postprocess_decision.json"


def site_pseudonyms(run_dir: str | os.PathLike, names: list[str]) -> dict[str, str]:
    """Real site name -> "site-N", stable across exports (new sites get the next numbers)."""
    return RunRecord.open(run_dir).pseudonyms(names)


def data_contract(fed, postprocess: dict | None = None, plan: dict | None = None) -> dict:
    """What an input must go through, from the federation config (imaging_core.bundle.contract);
    ``postprocess``: the chain the run evaluated with (default: the config's [postprocess])."""
    mods = [s.modality for s in fed.sites]
    default = fed.coordinator.modality if fed.coordinator is not None else Counter(mods).most_common(1)[0][0]
    pre = fed.preprocess_table("the bundle export").model_dump()
    used = sorted(set(mods) | {default})
    pre["intensity"] = {m: pre["intensity"][m] for m in used if m in pre["intensity"]}
    out = {**pre, "modality": default, "labels": {str(k): v for k, v in fed.labels.items()}, "in_channels": 1,
           "roi_size": list(fed.sampling.patch_size), "overlap": fed.train.overlap,
           "sw_batch_size": fed.train.sw_batch_size,
           "postprocess": dict(postprocess if postprocess is not None else fed.postprocess.chain_config())}
    if plan is not None:
        out["plan"] = plan
    return out


def postprocess_decision(run: RunRecord, r: int, num_classes: int) -> dict:
    """nnU-Net's largest-component decision for the model after round ``r``, from the
    sites' validation metrics (weighted by their validation cases) or, when no site
    measured the candidates, the coordinator's held-out ones (then said so)."""
    from fl_common.keys import GLOBAL
    from imaging_core.inference.choose_postprocess import decide_largest_component
    rows = []
    for m in run.site_metrics_after(r).values():
        scores = {k[len(GLOBAL):]: v for k, v in m.items() if k.startswith(GLOBAL)}
        rows.append((float(m.get("num_val") or 0.0), scores))
    d = decide_largest_component(rows, num_classes)
    d["source"] = "sites' validation cases"
    if not d["per_class"]:
        d = decide_largest_component([(1.0, run.central(r))], num_classes)
        d["source"] = ("the coordinator's held-out cases (no site measured the candidates; "
                       "this is the test set, so the held-out figures are optimistic)")
    d["round"] = r
    return d


def _expected_held_out(held: dict, decision: dict, num_classes: int) -> dict:
    """Held-out Dice expected under the decided chain, from the candidates the run measured."""
    out = {}
    for c in range(1, num_classes):
        k = "lcc_dice_" if c in decision["classes"] else "raw_dice_"
        if f"{k}{c}" in held:
            out[f"dice_{c}"] = held[f"{k}{c}"]
    vals = [v for v in out.values() if isinstance(v, (int, float)) and math.isfinite(v)]
    if vals:
        out["dice_fg_mean"] = sum(vals) / len(vals)
    return out


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


def run_record_verifier(key: Path | None, provision: str | os.PathLike | None, run_dir: Path,
                        allow_unsigned_run: bool = False):
    """The run-record public key (record_manifest.RecordKey) a run must be signed with to
    have its model signed with ``key``: the provision's, else ``run_record.pub`` beside
    ``key``. None for an unsigned bundle, or (loudly) when ``allow_unsigned_run``
    and there is no manifest or no key to check it with."""
    from fl_common.kit import SERVER_RUN_PUB
    from .record_manifest import RecordKey
    from .records import MANIFEST, RUN
    if key is None or not (run_dir / RUN).is_file():
        return None  # unsigned bundle; or no run directory, which RunRecord.open names
    pub = Path(provision) / "server" / SERVER_RUN_PUB if provision is not None else key.parent / SERVER_RUN_PUB
    manifest = run_dir / MANIFEST
    if pub.is_file() and manifest.is_file():
        return RecordKey.verifier(pub)
    if not pub.is_file():
        path, problem = pub, (f"missing: no run-record public key to check {manifest.name} with "
                              f"({'re-provision' if provision is not None else 'pass --provision'})")
    else:
        path, problem = manifest, "missing: the run record is not signed"
    if not allow_unsigned_run:
        raise ImagingError(path, f"{problem}, so nothing shows the model files are the ones the run "
                           "wrote; refusing to sign them (--allow-unsigned-run: only for a run written "
                           "before run records were signed)")
    print(f"WARNING: {path}: {problem}; exporting weights nothing verified (--allow-unsigned-run)",
          file=sys.stderr)
    return None


def _check_federation_file(run: RunRecord, path: Path) -> None:
    from .record_manifest import file_sha256
    want = run.info.get("federation_sha256")
    if want is None:
        return  # a run from before the hash was recorded (an unsigned one: export says so)
    got = file_sha256(path)
    if got != want:
        what = "is missing" if got is None else "changed since the run read it"
        raise ImagingError(path, f"{what} (the run record's SHA-256 {want[:12]}...); pass --federation "
                           "to export with another config on purpose")


def export_run(run_dir: str | os.PathLike, out_dir: str | os.PathLike, which: str = "best",
               key: str | os.PathLike | None = None, federation_path: str | os.PathLike | None = None,
               data_base: str | os.PathLike | None = None, overwrite: bool = False,
               version: str | None = None, provision: str | os.PathLike | None = None,
               postprocess: str = "run", allow_unsigned_run: bool = False) -> Path:
    """Export the run's ``which`` ("best" or "final") global model as a bundle in
    ``out_dir``, signed with ``key`` or the bundle-signing key of ``provision``
    (see ``signing_key``; neither: unsigned, which sites refuse unless told to
    allow it). The federation config and data base default to what run.json
    records. ``postprocess``: "run" ships the chain the run evaluated with, "auto" the
    one its validation metrics choose (see the module doc). A signed bundle needs a
    signed run record (``run_record_verifier``). Returns ``out_dir``."""
    from imaging_core.bundle.export import export_bundle
    from fl_common.config import load_federation
    from fl_common.crypto.signing import MANIFEST_SIGNATURES

    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final', got {which!r}")
    if postprocess not in ("run", "auto"):
        raise ValueError(f"postprocess must be 'run' or 'auto', got {postprocess!r}")
    key = signing_key(key, provision)  # refused before any work
    verifier = run_record_verifier(key, provision, Path(run_dir), allow_unsigned_run)
    run = RunRecord.open(run_dir, verify_key=verifier)  # a signed record: checked here, whole
    info = run.info
    fpath = federation_path or run.federation_path
    if not fpath:
        raise ImagingError(run.dir / "run.json", "does not record the federation config "
                           "(federation_path); pass it explicitly (--federation)")
    if federation_path is None:  # the recorded one: as the (signed) run read it, or refused
        _check_federation_file(run, Path(fpath))
    fed = load_federation(fpath, data_base=data_base or run.data_base)  # config reads: here only
    if run.preprocess is not None:  # what the run trained with: inference preprocesses the same way
        fed = fed.with_preprocess(run.preprocess)
    state = run.load_model(which)  # data only, and the file the run recorded
    if isinstance(state, dict) and "net" in state and isinstance(state["net"], dict):
        state = state["net"]

    names = [s.name for s in fed.sites]
    names += [n for n in run.site_names if n not in names]
    pseud = run.pseudonyms(names)
    r = run.model_round(which)
    per_site = run.site_metrics_after(r)
    fl = fed.federation
    from imaging_core.io.tables import write_json
    held = _finite(run.central(r))
    decision = postprocess_decision(run, r, len(fed.labels))
    write_json(run.dir / DECISION_FILE, decision)
    chain = info.get("postprocess")
    if chain is None:
        chain = fed.postprocess.chain_config()
    if postprocess == "auto" and decision["per_class"]:
        chain = {k: v for k, v in chain.items() if k in ("connectivity",)} | {"chain": decision["chain"]}
        held = _expected_held_out(held, decision, len(fed.labels))
    plan = run.plan  # `fedvox plan`'s plan.json in the run record, when the run had one
    if plan is not None:
        plan = {**plan, "postprocess": decision}
    provenance = {
        "run_id": info.get("run_id"), "federation": info.get("federation", fl.name),
        "rounds": info.get("rounds"), "rounds_completed": len([x for x in run.ok_rounds() if x > 0]),
        "strategy": info.get("strategy", fl.strategy),
        "secure_aggregation": info.get("secure_aggregation"),
        "min_sites": info.get("min_sites"), "best_metric": info.get("best_metric"),
        "which": which, "round": r, "status": info.get("status"),
        "run_record": ("signed; verified against the run-record key "
                       f"{MANIFEST_SIGNATURES.fingerprint(verifier.public)[:16]}..." if verifier is not None
                       else "not verified"),
        "preprocess_source": info.get("preprocess_source", "federation"),
        "sites": [pseud[n] for n in names if n in {s.name for s in fed.sites}],
        "postprocess": {"policy": postprocess, "chain": chain, "decision": decision},
        "metrics": {"held_out": held, "held_out_space": info.get("evaluation_space") or "preprocessed",
                    "sites": {pseud.get(s, s): _finite(m) for s, m in sorted(per_site.items(),
                                                                           key=lambda t: pseud.get(t[0], t[0]))}},
        "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    model_cfg = dict(info.get("model") or fed.model.model_dump())
    ver = version or f"1.0.{max(r, 0)}"
    from imaging_core.bundle.configs import UnexportableStep
    try:
        return export_bundle(state, model_cfg, data_contract(fed, chain, plan), provenance, out_dir,
                             signing_key_path=key, version=ver, overwrite=overwrite,
                             signature_scheme=MANIFEST_SIGNATURES)
    except UnexportableStep as e:
        raise ImagingError(run.dir / "run.json", f"[postprocess] of the run: {e}") from None
