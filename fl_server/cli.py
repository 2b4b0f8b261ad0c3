"""The one `fedvox` command line. Subcommands import their heavy modules lazily
so `fedvox --help` and light commands start fast.

Flag vocabulary (the same word means the same thing everywhere):
  RUN (positional)  the run directory a command reads (report, export)
  --run-dir         the run directory a command writes (server, train; `--out` still works for train)
  --work            scratch/work directory of processes, logs and caches (demo, prepare, server, site;
                    `--out` still works for prepare)
  --out             the command's product: a file (infer: the segmentation) or a directory
                    (export: the bundle; provision: the provisioning tree); each says which
  --device          auto (cuda when available, else cpu), cpu, cuda, cuda:N
"""
from __future__ import annotations

import argparse
import json
import sys

from fl_common.exit_codes import HELP as EXIT_CODES, INTERRUPTED

from .bundle_cli import add_bundle_commands


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("fedvox")
    except PackageNotFoundError:
        return "unknown (not installed as a distribution)"


def _cmd_inspect(a) -> int:
    from imaging_core.inspect import inspect_path
    print(json.dumps(inspect_path(a.path), indent=None if a.compact else 2))
    return 0


def _cmd_prepare(a) -> int:
    from fl_server.prepare import prepare_example
    prepare_example(a.work, zoom=a.zoom, cases=a.cases, seed=a.seed, workers=a.workers)
    return 0


def _cmd_demo(a) -> int:
    from fl_server.demo import run_demo
    return run_demo(a.work, zoom=a.zoom, cases=a.cases, seed=a.seed, rounds=a.rounds,
                    secure=not a.no_secure_aggregation, federation=a.federation, data_base=a.data_base,
                    hosts=a.hosts, example=a.example)


def _cmd_train(a) -> int:
    from fl_server.baseline import run_baseline
    from fl_common.config import example_federation_path
    fed = a.federation or example_federation_path()
    run_baseline(fed, a.site, a.run_dir, data_base=a.data_base, epochs=a.epochs, device=a.device, plan=a.plan)
    return 0


def _cmd_metrics(a) -> int:
    from imaging_core.metrics import metrics_for_files
    spacing = tuple(float(x) for x in a.spacing) if a.spacing else None
    print(json.dumps(metrics_for_files(a.pred, a.gt, spacing=spacing, num_classes=a.num_classes),
                     indent=None if a.compact else 2))
    return 0


def _cmd_provision(a) -> int:
    from fl_server.provision import provision
    prov = provision(a.out, a.enroll, hosts=a.host or ("127.0.0.1", "localhost"), federation=a.name,
                     force=a.force, port=a.port)
    enrolled = json.loads((prov.root / "federation.json").read_text())["enrolled"]
    print(json.dumps({"provision": str(prov.root), "superlink": prov.superlink_address,
                      "roster_fingerprint": prov.roster_fingerprint, "enrolled": enrolled,
                      "kits": {k: str(v) for k, v in prov.site_kits.items()}}, indent=2))
    print(f"roster fingerprint: {prov.roster_fingerprint} -- read it to every site out of band; "
          "each pins it with `fedvox site trust`", file=sys.stderr)
    return 0


def _cmd_server(a) -> int:
    from pathlib import Path
    from fl_common.supervise import ProcessGroup
    from fl_server import deploy
    from fl_server.provision import load_provision
    prov = load_provision(a.provision)
    from fl_server.record_manifest import RecordKey
    RecordKey.signer(prov.run_record_key)  # the ServerApp signs the run record with it: refuse now, not mid-run
    port = a.port or deploy.provisioned_port(prov)
    try:
        pairs = [deploy.parse_listen(x, port) for x in a.listen or ()]
    except ValueError as e:
        print(f"fedvox server: {e}", file=sys.stderr)
        return 2
    from fl_server.runs import ServerSession
    group = ProcessGroup("fedvox-server")
    # the session is left last: the group has stopped every process when it marks the run stopped
    with ServerSession(Path(a.run_dir), Path(a.work) / "run.log", group.tag, progress=not a.no_progress) as session, \
            group:
        listen = deploy.fleet_listen(prov, pairs, port)
        sl, cli = deploy.start_superlink(group, prov, Path(a.work), None, a.insecure, listen=listen)
        print(f"sites connect to {sl.fleet_address} ({'INSECURE' if a.insecure else 'TLS + SuperNode auth'})",
              file=sys.stderr)
        spec = deploy.write_spec(Path(a.run_dir), Path(a.federation), Path(a.data_base) if a.data_base else None,
                                 not a.no_secure_aggregation, prov.roster_path, provision=prov.root, rounds=a.rounds,
                                 connect_timeout=a.connect_timeout, harmonisation_check=True,
                                 strict_check=a.strict_check or None, plan_memory_gb=a.plan_memory_gb)
        res = deploy.run_federation(cli, prov.federation, spec, a.timeout, Path(a.work) / "run.log")
        print(f"run {res.run_id}: {res.status} in {res.seconds:.0f} s; records in {a.run_dir}", file=sys.stderr)
        if not res.ok:
            print(res.details, file=sys.stderr)
            return 1
    return INTERRUPTED if session.interrupted else 0


def _cmd_site(a) -> int:
    missing = [f for f, v in (("--kit", a.kit), ("--keys", a.keys), ("--data", a.data)) if not v]
    if missing:
        print(f"fedvox site: {', '.join(missing)} required (or a subcommand: init, trust, fingerprint)",
              file=sys.stderr)
        return 2
    from fl_client.site import run_site  # lazy: only `fedvox site` starts a site
    return run_site(a.kit, a.keys, a.work, a.data, federation=a.federation, superlink=a.superlink,
                    insecure=a.insecure, device=a.device, trust_on_first_use=a.trust_on_first_use)


def _cmd_site_init(a) -> int:
    from fl_client.enroll import init_site, read_request
    req = read_request(init_site(a.site, a.out, force=a.force))
    print(json.dumps({"site": req.site, "request": str(req.path), "fingerprint": req.fingerprint}, indent=2))
    print(f"send {req.path} to the coordinator and confirm its fingerprint {req.fingerprint} out of band; "
          f"{a.out} holds the private key: it never leaves this site", file=sys.stderr)
    return 0


def _cmd_site_trust(a) -> int:
    from fl_client.enroll import trust_roster
    from fl_common.kit import read_kit
    print(f"pinned in {trust_roster(read_kit(a.kit), a.keys, a.fingerprint)}")
    return 0


def _cmd_site_fingerprint(a) -> int:
    from fl_common.crypto.pki import roster_fingerprint
    from fl_common.kit import read_kit
    kit = read_kit(a.kit)
    print(roster_fingerprint(kit.roster))
    return 0


def _cmd_report(a) -> int:
    from fl_server.report import make_report
    make_report(a.run, a.baseline, evaluate=not a.no_cases, federation_path=a.federation,
                data_base=a.data_base, device=a.device)
    return 0


def _cmd_export(a) -> int:
    from fl_server.export import export_run
    from fl_server.records import RunRecord
    out = export_run(a.run, a.out, a.which, a.key, a.federation, a.data_base, a.overwrite,
                     provision=a.provision, postprocess=a.postprocess, allow_unsigned_run=a.allow_unsigned_run)
    rec = RunRecord.open(a.run)
    r = rec.model_round(a.which)
    print(f"exported the {a.which} global model (after round {r}) to", file=sys.stderr)
    print(str(out))
    return 0


def _device_flag(p, default) -> None:
    p.add_argument("--device", default=default,
                   help=f"auto (cuda when available, else cpu), cpu, cuda or cuda:N (default: {default})")


def _example_flags(p) -> None:
    p.add_argument("--zoom", type=float, default=1.0, help="example size knob (divides voxel sizes)")
    p.add_argument("--cases", type=float, default=1.0, help="multiply example case counts")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedvox", description="Federated 3D medical image segmentation",
                                 epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    ap.add_argument("--version", action="version", version=f"fedvox {_version()}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def cmd(name, fn, helptext, **kw):
        p = sub.add_parser(name, help=helptext, description=helptext, epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        p.set_defaults(fn=fn)
        return p

    p = cmd("inspect", _cmd_inspect, "describe a NIfTI/NRRD file, DICOM series or dataset.json as JSON")
    p.add_argument("path")
    p.add_argument("--compact", action="store_true")

    p = cmd("prepare", _cmd_prepare, "generate sites_example and build each site's cache")
    p.add_argument("--work", "--out", dest="work", default="work",
                   help="work directory (created): WORK/sites and WORK/cache")
    _example_flags(p)
    p.add_argument("--workers", type=int, default=0, help="build this many sites' caches at once")

    p = cmd("demo", _cmd_demo, "run the example federation end to end on this machine")
    p.add_argument("--work", default="work", help="work directory (created): sites, provision, run, bundle")
    _example_flags(p)
    p.add_argument("--rounds", type=int, default=None, help="override the federation's rounds")
    p.add_argument("--example", choices=("synthetic", "real"), default="synthetic",
                   help="synthetic phantoms (default) or real brain anatomy (sites_example/real, ICBM152)")
    p.add_argument("--federation", default=None,
                   help="your own federation TOML naming site data roots (default: sites_example)")
    p.add_argument("--data-base", default=None, help="base of relative data roots in --federation")
    p.add_argument("--no-secure-aggregation", action="store_true", help="send deltas unmasked (development only)")
    p.add_argument("--hosts", action="store_true",
                   help="rehearse across machines: coordinator and each site in its own network namespace "
                        "(root; removed afterwards), sites connecting by host name over TLS")

    p = cmd("train", _cmd_train, "local-only (one site) or pooled baseline, no federation")
    p.add_argument("--site", default="pooled", help="a site name, or 'pooled' (all sites' data together)")
    p.add_argument("--federation", default=None, help="federation TOML (default: sites_example)")
    p.add_argument("--data-base", default=None, help="base directory of relative site data roots")
    p.add_argument("--run-dir", "--out", dest="run_dir", required=True, help="run directory (written)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--plan", default=None, help='plan.json (`fedvox plan`) for a [preprocess] = "auto" federation')
    _device_flag(p, "cpu")

    p = cmd("provision", _cmd_provision,
            "federation CA, server certificate, bundle-signing key and one startup kit per enrolled site")
    p.add_argument("--out", required=True, help="provisioning directory (written)")
    p.add_argument("--enroll", nargs="+", required=True, metavar="REQUEST",
                   help="each site's enroll.json from `fedvox site init` (no site key is made here)")
    p.add_argument("--host", action="append", help="SuperLink host name/IP for the certificate (repeatable)")
    p.add_argument("--name", default="fedvox", help="federation name")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--force", action="store_true")

    p = cmd("server", _cmd_server, "run the SuperLink (TLS + node auth) and the federated run")
    p.add_argument("--provision", required=True, help="directory written by `fedvox provision`")
    p.add_argument("--federation", required=True, help="federation TOML")
    p.add_argument("--data-base", default=None, help="base of the coordinator's relative data root")
    p.add_argument("--run-dir", required=True, help="run directory (written; resumed if it holds a run)")
    p.add_argument("--work", default="work/server", help="SuperLink state and logs")
    p.add_argument("--listen", action="append", metavar="HOST[:PORT]",
                   help="where sites connect (repeatable; default: every provisioned host name/IP). "
                        "Only the Fleet API listens there; the Control and ServerAppIo APIs stay on 127.0.0.1")
    p.add_argument("--port", type=int, default=None, help="port for sites (default: the provisioned one)")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--connect-timeout", type=float, default=1800.0, help="wait this long for min_sites")
    p.add_argument("--timeout", type=float, default=24 * 3600.0)
    p.add_argument("--insecure", action="store_true", help="no TLS, no node auth (local development only)")
    p.add_argument("--no-secure-aggregation", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no per-round progress lines on stdout")

    from fl_server.runs_cli import add_runs_parser
    add_runs_parser(cmd)
    p.add_argument("--strict-check", action="store_true", help="refuse to start on any harmonisation flag")
    p.add_argument("--plan-memory-gb", type=float, default=None,
                   help="also derive plan.json from the sites' fingerprints for this training memory "
                        "(always with [preprocess] = \"auto\": default planner.DEFAULT_MEMORY_GB)")

    p = cmd("site", _cmd_site, "run this hospital's site worker and SuperNode (or: site init | trust | fingerprint)")
    p.add_argument("--kit", default=None, help="this site's startup kit (required to run)")
    p.add_argument("--keys", default=None, help="this site's key directory from `fedvox site init` (required to run)")
    p.add_argument("--data", default=None, help="this site's data root, holds dataset.json (required to run)")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="no pinned roster yet: pin the kit's roster now instead of refusing")
    p.add_argument("--federation", default=None, help="federation TOML (default: KIT/federation.toml)")
    p.add_argument("--work", default="work/site", help="worker cache, SuperNode state and logs")
    p.add_argument("--superlink", default=None, help="override the kit's SuperLink address")
    _device_flag(p, None)
    p.add_argument("--insecure", action="store_true")
    ssub = p.add_subparsers(dest="site_cmd", required=False, metavar="SUBCOMMAND")

    def scmd(name, fn, helptext):
        q = ssub.add_parser(name, help=helptext, description=helptext, epilog=EXIT_CODES,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        q.set_defaults(fn=fn)
        return q

    q = scmd("init", _cmd_site_init, "make this site's key pair here and its enrollment request")
    q.add_argument("--site", required=True, help="this site's name")
    q.add_argument("--out", required=True, help="key directory (written, 0700): auth.key, enroll.json")
    q.add_argument("--force", action="store_true", help="replace an existing site key")
    q = scmd("trust", _cmd_site_trust, "pin the kit's roster fingerprint (as the coordinator read it to you)")
    q.add_argument("kit", metavar="KIT")
    q.add_argument("--keys", required=True, help="this site's key directory (the pin is written there)")
    q.add_argument("--fingerprint", required=True, help="the roster fingerprint you were given out of band")
    q = scmd("fingerprint", _cmd_site_fingerprint, "print the roster fingerprint of a startup kit")
    q.add_argument("kit", metavar="KIT")
    from fl_client.site_status import add_status_parser  # light: its work is imported when it runs
    add_status_parser(scmd)

    from fl_server.plan_cli import add_plan_commands
    add_plan_commands(cmd)

    p = cmd("report", _cmd_report, "per-site vs global tables, CSV/JSON, PNG plots and an HTML page of a run")
    p.add_argument("run", metavar="RUN", help="federated run directory (read; the report goes to RUN/report)")
    p.add_argument("--baseline", action="append", default=[], help="baseline run dir from `fedvox train`")
    p.add_argument("--federation", default=None, help="federation TOML (default: the one run.json records)")
    p.add_argument("--data-base", default=None, help="base of relative data roots (default: run.json's)")
    p.add_argument("--no-cases", action="store_true",
                   help="skip re-evaluating the held-out cases (per-case HD95 and overlay PNGs)")
    _device_flag(p, "cpu")

    p = cmd("export", _cmd_export, "export a run's global model as a signed MONAI bundle")
    p.add_argument("run", metavar="RUN", help="federated run directory (read)")
    p.add_argument("--out", required=True, help="bundle directory (written)")
    p.add_argument("--which", choices=("best", "final"), default="best",
                   help="best: the round with the best held-out metric (round 0 included); final: the last")
    p.add_argument("--key", default=None,
                   help="bundle-signing key (PEM or OpenSSH); the federation CA key is refused")
    p.add_argument("--provision", default=None,
                   help="provisioning directory: sign with its server/bundle_signing.key (unless --key), "
                        "and refuse a --key that is its CA key; the run's signed record is checked against "
                        "its server/run_record.pub (without --provision: run_record.pub beside --key)")
    p.add_argument("--allow-unsigned-run", action="store_true",
                   help="sign the model of a run whose record is not signed (a run written before run "
                        "records were signed); a signed record that does not verify is refused regardless")
    p.add_argument("--federation", default=None, help="federation TOML (default: the one run.json records)")
    p.add_argument("--data-base", default=None, help="base of relative data roots (default: run.json's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle directory")
    p.add_argument("--postprocess", choices=("run", "auto"), default="run",
                   help="run: the chain the run evaluated with; auto: keep the largest component of a class "
                        "only where it raised the sites' validation Dice (nnU-Net's rule)")

    add_bundle_commands(cmd, _device_flag)

    p = cmd("metrics", _cmd_metrics, "Dice / HD95 / ASSD of a predicted label file against ground truth")
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("--spacing", nargs=3, default=None, help="override the files' voxel spacing (mm)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--compact", action="store_true")
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    from imaging_core.errors import ImagingError
    from fl_server.device import DeviceError, resolve_device
    try:
        if getattr(a, "device", None) is not None:
            a.device = resolve_device(a.device)
        return int(a.fn(a) or 0)
    except (ImagingError, DeviceError) as e:
        if a.debug:
            raise
        print(f"fedvox {a.cmd}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedvox {a.cmd}: interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as e:  # incl. ProvisionError, LaunchError
        if a.debug:
            raise
        print(f"fedvox {a.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
