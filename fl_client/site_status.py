"""`fedvox site status`: what a hospital's IT asks of a running site, read from
its work directory (no call to the coordinator): is `fedvox site` up (WORK/site.json,
its pid file), is the SuperNode connected (its log since its last start), the
last round this site joined (the policy's per-run state), the policy in force
(the site.toml its node config names), the cache (what the worker reported when
it became ready) and the device.

Exit status (fl_common.exit_codes): OK when the site is up and connected,
NOT_RUNNING otherwise (the report is printed either way), USAGE for a
directory that is no site work directory."""
from __future__ import annotations

import json
import re
import sys
import time
import tomllib
from pathlib import Path

from fl_common import exit_codes as X, pidfile

SITE_PID = "site.json"
START_MARK = "# fedvox: start supernode"  # fl_common.supervise's header before each start
SUPERNODE_CONNECTED = r"SuperNode ID: (\d+)"  # fl_client.supernode.SUPERNODE_CONNECTED, with its group


def write_site_pid(work: Path, site: str, superlink: str, group_tag: str) -> Path:
    return pidfile.write(Path(work) / SITE_PID, site=site, superlink=superlink, group=group_tag)


def _supernode(work: Path, up: bool) -> dict:
    log = work / "supernode.log"
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return {"state": "never started", "log": str(log)}
    text = text[text.rfind(START_MARK):] if START_MARK in text else text
    ids = re.findall(SUPERNODE_CONNECTED, text)
    if not up:
        state = "not running"
    else:
        state = "connected" if ids else "connecting"
    return {"state": state, "node_id": int(ids[-1]) if ids else None, "log": str(log)}


def _last_round(work: Path) -> dict | None:
    """The newest run's policy state (fl_client.policy.PolicyState): its last trained round."""
    runs = sorted((work / "state" / "policy").glob("run-*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None
    try:
        st = json.loads(runs[-1].read_text())
    except (OSError, ValueError):
        return None
    return {"round": int(st.get("latest", 0)), "rounds_trained": len(st.get("trained") or {}),
            "run_closed": bool(st.get("closed")), "at": runs[-1].stat().st_mtime, "runs_seen": len(runs)}


def _policy(work: Path) -> dict | None:
    from fl_common import keys as K
    try:
        nc = tomllib.loads((work / "node_config.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    site_toml = nc.get(K.NODE_SITE_CONFIG)
    if not site_toml:
        return None
    from fl_common.config import read_site_file
    return {"file": site_toml, **read_site_file(site_toml).policy.model_dump()}


def _cache(work: Path) -> dict:
    ready = work / "worker.ready"
    cache = work / "cache"
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) if cache.is_dir() else 0
    out = {"dir": str(cache), "bytes": size, "ready": ready.is_file()}
    if ready.is_file():
        try:
            st = json.loads(ready.read_text())
        except ValueError:
            st = {}
        out.update(num_train=st.get("num_train"), num_val=st.get("num_val"),
                   skipped=len(st.get("skipped") or {}), device=st.get("device"))
    return out


def site_status(work) -> dict:
    from imaging_core.errors import ImagingError
    work = Path(work)
    info = pidfile.read(work / SITE_PID)
    if info is None and not (work / "supernode.log").is_file():
        raise ImagingError(work, f"not a site work directory (no {SITE_PID} and no supernode.log): "
                           "give the --work of `fedvox site`")
    up = pidfile.alive(info)
    cache = _cache(work)
    return {"work": str(work), "site": (info or {}).get("site"), "up": up,
            "pid": (info or {}).get("pid") if up else None, "superlink": (info or {}).get("superlink"),
            "supernode": _supernode(work, up), "last_round": _last_round(work), "policy": _policy(work),
            "cache": cache, "device": cache.get("device")}


def _print(s: dict) -> None:
    when = (lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-")
    print(f"site {s['site'] or '?'} ({s['work']}): {'up, pid ' + str(s['pid']) if s['up'] else 'not running'}")
    sn = s["supernode"]
    node = f" as node {sn['node_id']}" if sn.get("node_id") is not None else ""
    print(f"  SuperNode: {sn['state']}{node} to {s.get('superlink') or '?'}")
    lr = s["last_round"]
    print("  last round joined: " + ("none yet" if not lr else
          f"{lr['round']} ({lr['rounds_trained']} trained in this run"
          f"{', run closed' if lr['run_closed'] else ''}; {when(lr['at'])})"))
    c = s["cache"]
    print(f"  cache: {'ready' if c['ready'] else 'not ready'}, {c['bytes'] / 1e6:.1f} MB in {c['dir']}"
          + (f"; {c['num_train']} train / {c['num_val']} val cases, {c['skipped']} skipped" if c["ready"] else ""))
    print(f"  device: {s['device'] or '?'}")
    pol = s["policy"]
    if pol:
        print(f"  policy in force ({pol.pop('file')}): " + ", ".join(f"{k}={v}" for k, v in pol.items()))
    else:
        print("  policy in force: unknown (no node_config.toml naming a site.toml)")


def _cmd_status(a) -> int:
    s = site_status(a.work)
    if a.json:
        print(json.dumps(s, indent=1))
    else:
        _print(s)
    ok = s["up"] and s["supernode"]["state"] == "connected"
    if not ok:
        print(f"fedvox site status: {a.work}: the site is not up and connected", file=sys.stderr)
    return X.OK if ok else X.NOT_RUNNING


def add_status_parser(scmd) -> None:
    """Register `fedvox site status` through cli.build_parser's ``scmd`` helper."""
    import argparse
    q = scmd("status", _cmd_status, "is this site up and its SuperNode connected; last round joined, "
             "policy in force, cache, device")
    # SUPPRESS: `fedvox site --work W status` keeps W (the parent parser's default is work/site)
    q.add_argument("--work", default=argparse.SUPPRESS, help="the site's work directory (`fedvox site --work`)")
    q.add_argument("--json", action="store_true")
