"""`fedvox demo`: the example federation end to end on this machine.

Generates sites_example, plays each hospital's enrollment (`fedvox site init`:
each site's key made in its own key directory, never in the provision tree),
provisions a federation from the requests (CA, server certificate, one startup
kit per site), has each site pin the roster fingerprint, starts a SuperLink with TLS and node authentication, a
site worker + SuperNode per hospital, runs the federation with secure
aggregation, shows a live per-round table, and ends with the per-site vs
global comparison, the report and the exported bundle. Every process it
starts is stopped on exit, Ctrl-C or failure.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from rich.live import Live
from rich.table import Table

from fl_common.config import example_federation_path, load_federation
from fl_common.keys import CENTRAL, GLOBAL, LOCAL
from fl_common.supervise import ProcessGroup
from imaging_core.errors import ImagingError

from . import deploy
from .prepare import console
from .records import RunRecord


def _record(run_dir: Path) -> RunRecord | None:
    """The run so far (None before the server has started it)."""
    try:
        return RunRecord.open(run_dir)
    except ImagingError:
        return None


def round_table(run_dir: Path, labels: dict) -> Table:
    t = Table(title="federated rounds (central = coordinator's held-out cases)")
    for c in ("round", "status", "sites", "failures", "central Dice fg", *[f"Dice {labels[k]}" for k in labels if k],
              "seconds"):
        t.add_column(c, justify="right")
    rec = _record(run_dir)
    for r in (rec.rounds if rec else []):
        t.add_row(str(r["round"]), r.get("status", "init"), str(r.get("sites_aggregated", "")),
                  str(r.get("n_failures", "")), _f(r.get(f"{CENTRAL}dice_fg_mean")),
                  *[_f(r.get(f"{CENTRAL}dice_{k}")) for k in labels if k], _f(r.get("seconds"), 1))
    return t


def _f(v, nd: int = 3) -> str:
    return "" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def comparison_table(run_dir: Path, labels: dict) -> Table:
    """Each site's validation cases: the final global model vs its local-only model."""
    t = Table(title="per-site validation: global (federated) vs local-only")
    t.add_column("site")
    for k in labels:
        if k:
            t.add_column(f"Dice {labels[k]} global", justify="right")
            t.add_column(f"Dice {labels[k]} local", justify="right")
    t.add_column("gain fg", justify="right")
    rec = _record(run_dir)
    for row in (rec.final_sites.get("sites", []) if rec else []):
        g, lo = row.get(f"{GLOBAL}dice_fg_mean"), row.get(f"{LOCAL}dice_fg_mean")
        cells = []
        for k in labels:
            if k:
                cells += [_f(row.get(f"{GLOBAL}dice_{k}")), _f(row.get(f"{LOCAL}dice_{k}"))]
        t.add_row(row["site"], *cells, _f(g - lo) if g is not None and lo is not None else "")
    return t


def enroll_and_provision(work: Path, names: list[str], federation: str, **provision_kw):
    """What each hospital and the coordinator do, played on one machine: every
    site makes its key in its own directory (work/site-keys/<site>), the
    coordinator provisions from the requests, and each site pins the roster
    fingerprint the coordinator "reads out" (here: passes in memory).
    ``provision_kw``: hosts, port (as `fedvox provision --host/--port`)."""
    from fl_client.enroll import init_site, trust_roster
    from fl_common.kit import read_kit
    from .provision import provision
    keys = {n: work / "site-keys" / n for n in names}
    reqs = [init_site(n, keys[n], force=True) for n in names]  # the demo owns these directories
    prov = provision(work / "provision", reqs, federation=federation, force=True, **provision_kw)
    for n in names:
        trust_roster(read_kit(prov.site_kits[n]), keys[n], prov.roster_fingerprint)
    return prov, keys


def run_demo(work: str | Path, zoom: float = 1.0, cases: float = 1.0, seed: int = 0, rounds: int | None = None,
             secure: bool = True, federation: str | Path | None = None, data_base: str | Path | None = None,
             timeout: float = 3600.0, hosts: bool = False, example: str = "synthetic") -> int:
    work = Path(work).resolve()
    if federation is None:
        work.mkdir(parents=True, exist_ok=True)
        federation, data_base = _generate_example(example, work / "sites", zoom, cases, seed)
    fed = load_federation(federation, data_base=data_base)
    for site in fed.all_sites:
        if not Path(site.datalist_path).is_file():  # before any process starts
            raise ImagingError(site.datalist_path, f"{site.name}: datalist not found "
                               "(check --data-base and the site's data_root)")
    work.mkdir(parents=True, exist_ok=True)
    from .plan import run_check  # the harmonisation check before round 1 (issue 16)
    with console.status("harmonisation check: fingerprinting the sites"):
        harmonisation = run_check(federation, data_base)
    console.print(harmonisation["text"])
    t0 = time.monotonic()
    names = [s.name for s in fed.sites]
    if hosts:
        from .netns import COORD_NAME
        prov_hosts = {"hosts": [COORD_NAME]}
    else:
        prov_hosts = {}
    prov, keys = enroll_and_provision(work, names, fed.federation.name.replace("_", "-"), **prov_hosts)
    run_dir = work / "run"
    import shutil
    # a demo always starts a fresh run, with freshly enrolled sites: their old state (the
    # policy's release ledger, secure-aggregation sessions) belonged to the previous keys,
    # and would count this demo against the sites' daily run bounds
    for old in (run_dir, work / "sites-work"):
        if old.exists():
            shutil.rmtree(old)
    if not fed.preprocess_auto:  # "auto": the server's plan stage runs (and writes the table with plan.json)
        RunRecord(run_dir).save_harmonisation(harmonisation)
    labels = dict(fed.labels)
    if hosts:
        from .demo_hosts import run_on_hosts
        rc = run_on_hosts(fed, Path(federation), Path(data_base) if data_base else None, prov, keys, work, run_dir,
                          secure, rounds, timeout, lambda: round_table(run_dir, labels))
        if rc:
            return rc
        console.print(comparison_table(run_dir, labels))
        console.print(f"federated run across namespaces finished in {time.monotonic() - t0:.0f} s")
        _after_run(run_dir, work, prov)
        return 0
    t0 = time.monotonic()
    with ProcessGroup("fedvox-demo") as group:
        with console.status("starting SuperLink (TLS + node authentication)"):
            sl, cli = deploy.start_superlink(group, prov, work / "server", None, insecure=False)
        console.print(f"SuperLink on {sl.address}: TLS, SuperNode auth, {len(names)} site keys registered")
        from concurrent.futures import ThreadPoolExecutor, as_completed

        from fl_client.site import start_site  # the demo starts the sites too
        from fl_common.kit import read_kit

        def _start(s):
            start_site(group, read_kit(prov.site_kits[s.name]), keys[s.name], Path(federation), Path(s.config_path),
                       work / "sites-work" / s.name, sl.address, data_base=Path(data_base) if data_base else None)
            return s.name
        # all at once, as real hospitals come up: a site's start is mostly waiting (worker
        # cache, SuperNode connection); a failure still stops every process (the group)
        with console.status(f"starting {len(fed.sites)} sites: worker (cache) + SuperNode each"), \
                ThreadPoolExecutor(max_workers=len(fed.sites)) as pool:
            for fut in as_completed([pool.submit(_start, s) for s in fed.sites]):
                console.print(f"  {fut.result()}: worker ready, SuperNode connected")
        spec = deploy.write_spec(run_dir, Path(federation), Path(data_base) if data_base else None, secure,
                                 prov.roster_path, provision=prov.root, rounds=rounds,
                                 min_sites=min(len(names), 2))
        result: dict = {}

        def _run():
            result["r"] = deploy.run_federation(cli, prov.federation, spec, timeout, work / "server" / "run.log")

        th = threading.Thread(target=_run, daemon=True)
        th.start()
        from .progress import Follower, line_printer  # one line per stage above the live table
        with Live(round_table(run_dir, labels), console=console, refresh_per_second=1) as live, \
                Follower(run_dir, line_printer(console=console), from_start=True):
            while th.is_alive():
                th.join(2.0)
                live.update(round_table(run_dir, labels))
        res = result.get("r")
        if res is None or not res.ok:
            console.print(f"[red]federated run did not complete: {getattr(res, 'status', 'no result')}\n"
                          f"{getattr(res, 'details', '')}")
            console.print(f"logs: {work / 'server'} and {work / 'sites-work'}")
            return 1
    console.print(comparison_table(run_dir, labels))
    console.print(f"federated run finished in {time.monotonic() - t0:.0f} s; run directory: {run_dir}")
    _after_run(run_dir, work, prov)
    return 0


def _generate_example(example: str, out: Path, zoom: float, cases: float, seed: int) -> tuple[Path, Path]:
    """Write the example's site data under ``out``; its federation TOML and data base."""
    if example == "real":  # ICBM152 anatomy (nilearn's shipped template), simulated scanners
        from sites_example.real.generate import federation_path, generate as generate_real
        with console.status("generating the real-anatomy federation (sites_example/real)"):
            generate_real(out, cases=cases, seed=seed)
        return federation_path(), out
    if example != "synthetic":
        raise ValueError(f"unknown example {example!r} (synthetic or real)")
    from sites_example.generate import generate
    with console.status("generating sites_example"):
        generate(out, zoom=zoom, cases=cases, seed=seed)
    return example_federation_path(), out


def _after_run(run_dir: Path, work: Path, prov) -> None:
    """The comparison report and the exported bundle of the best global model."""
    from .export import export_run
    from .report import make_report
    # as `fedvox report` does: overlays of held-out cases (the cross-site heatmap comes
    # from the run's cross_site.json)
    rep = make_report(run_dir, evaluate=True, console=console)
    console.print(f"report: {rep / 'report.html'}")
    # the demo owns its work directory and starts a fresh run each time: so is its bundle.
    # Signed with the provision's bundle-signing key (never the CA key, which export refuses).
    from fl_common.kit import SERVER_BUNDLE_KEY
    signed = (prov.root / "server" / SERVER_BUNDLE_KEY).is_file()
    if not signed:
        console.print(f"note: {prov.root / 'server'} has no {SERVER_BUNDLE_KEY}; the bundle is unsigned")
    try:
        out = export_run(run_dir, work / "bundle", provision=prov.root if signed else None, overwrite=True)
    except ValueError as e:  # a step MONAI cannot express (e.g. crf): refused, said why
        console.print(f"[yellow]no bundle exported: {e}")
        return
    console.print(f"exported MONAI bundle: {out} ({exported_model(run_dir)})")


def exported_model(run_dir: Path) -> str:
    """Which model the bundle holds, in words: its round and held-out score."""
    rec = RunRecord.open(run_dir)
    r, score = rec.best()
    what = "the initial model" if r == 0 else f"the global model after round {r}"
    val = f"{score:.3f}" if score == score else "not measured"
    return f"best: {what}, held-out {rec.best_metric} {val}"
