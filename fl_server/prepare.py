"""`fedvox prepare`: generate the example federation and build every site's cache."""
from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fl_common.config import example_federation_path, load_federation

console = Console(stderr=True)


def prepare_sites(fed, cache_base: Path, workers: int = 0) -> dict:
    """Build each site's (and the coordinator's) cache; returns SiteData by name.

    ``workers`` > 1 builds that many sites' caches at once (threads: the work is
    file I/O and numpy, which release the GIL; each site has its own cache directory).
    """
    from concurrent.futures import ThreadPoolExecutor
    from imaging_core.task import Task
    task = Task(fed)
    out = {site.name: task.site_data(site, cache_base / site.name, fed.federation.seed)
           for site in fed.all_sites}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as prog:
        def build(name: str) -> None:
            sd = out[name]
            bar = prog.add_task(f"cache {name}", total=len(sd.datalist.cases))
            sd.prepare(progress=lambda _cid: prog.advance(bar))
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare") as pool:
                list(pool.map(build, out))  # list(): re-raises the first failure here
        else:
            for name in out:
                build(name)
    return out


def cache_table(site_data: dict) -> Table:
    t = Table(title="Site caches")
    for col in ("site", "cases ok", "built", "reused", "failed", "seconds"):
        t.add_column(col, justify="right" if col != "site" else "left")
    for name, sd in site_data.items():
        r = sd.report
        t.add_row(name, str(len(r.cases)), str(len(r.built)), str(len(r.reused)),
                  str(len(r.failed)), f"{r.seconds:.2f}")
    return t


def prepare_example(out: str | Path, zoom: float = 1.0, cases: float = 1.0, seed: int = 0,
                    workers: int = 0) -> dict:
    """Generate sites_example under ``out``/sites and build every cache under ``out``/cache
    (``workers`` sites at a time)."""
    from sites_example.generate import generate
    out = Path(out)
    t0 = time.perf_counter()
    with console.status("generating sites_example"):
        generate(out / "sites", zoom=zoom, cases=cases, seed=seed)
    console.print(f"generated sites_example in {time.perf_counter() - t0:.1f} s -> {out / 'sites'}")
    fed = load_federation(example_federation_path(), data_base=out / "sites")
    site_data = prepare_sites(fed, out / "cache", workers=workers)
    console.print(cache_table(site_data))
    for name, sd in site_data.items():
        for cid, err in sd.report.failed.items():
            console.print(f"[yellow]{name}: skipped {cid}: {err}")
    return site_data
