"""The one `fedvox` command line. Subcommands import their heavy modules lazily
so `fedvox --help` and light commands start fast."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_inspect(a) -> int:
    from imaging_core.inspect import inspect_path
    print(json.dumps(inspect_path(a.path), indent=None if a.compact else 2))
    return 0


def _cmd_prepare(a) -> int:
    from fl_server.prepare import prepare_example
    prepare_example(a.out, zoom=a.zoom, cases=a.cases, seed=a.seed, workers=a.workers)
    return 0


def _cmd_demo(a) -> int:
    from fl_server.demo import run_demo
    return run_demo(a.work, zoom=a.zoom, cases=a.cases, seed=a.seed, rounds=a.rounds,
                    secure=not a.no_secure_aggregation, federation=a.federation, data_base=a.data_base)


def _cmd_train(a) -> int:
    from fl_server.baseline import run_baseline
    from fl_server.config import example_federation_path
    fed = a.federation or example_federation_path()
    run_baseline(fed, a.site, a.out, data_base=a.data_base, epochs=a.epochs, device=a.device)
    return 0


def _cmd_metrics(a) -> int:
    from imaging_core.metrics import metrics_for_files
    spacing = tuple(float(x) for x in a.spacing) if a.spacing else None
    print(json.dumps(metrics_for_files(a.pred, a.gt, spacing=spacing, num_classes=a.num_classes),
                     indent=None if a.compact else 2))
    return 0


def _cmd_provision(a) -> int:
    from fl_server.provision import provision
    sites = [x for s in a.sites for x in s.split(",") if x]
    prov = provision(a.out, sites, hosts=a.host or ("127.0.0.1", "localhost"), federation=a.name,
                     force=a.force, port=a.port)
    print(json.dumps({"provision": str(prov.root), "superlink": prov.superlink_address,
                      "kits": {k: str(v) for k, v in prov.site_kits.items()}}, indent=2))
    return 0


def _cmd_server(a) -> int:
    from pathlib import Path
    from fl_common.supervise import ProcessGroup
    from fl_server import deploy
    from fl_server.provision import load_provision
    prov = load_provision(a.provision)
    with ProcessGroup("fedvox-server") as group:
        sl, cli = deploy.start_superlink(group, prov, Path(a.work), a.port, a.insecure)
        print(f"SuperLink on {sl.address} ({'INSECURE' if a.insecure else 'TLS + SuperNode auth'})",
              file=sys.stderr)
        spec = deploy.write_spec(Path(a.run_dir), Path(a.federation), Path(a.data_base) if a.data_base else None,
                                 not a.no_secure_aggregation, prov.roster_path, rounds=a.rounds,
                                 connect_timeout=a.connect_timeout)
        res = deploy.run_federation(cli, prov.federation, spec, a.timeout, Path(a.work) / "run.log")
        print(f"run {res.run_id}: {res.status} in {res.seconds:.0f} s; records in {a.run_dir}", file=sys.stderr)
        if not res.ok:
            print(res.details, file=sys.stderr)
            return 1
    return 0


def _cmd_site(a) -> int:
    from fl_client.site import run_site  # lazy: only `fedvox site` starts a site
    return run_site(a.kit, a.work, a.data, federation=a.federation, superlink=a.superlink,
                    insecure=a.insecure, device=a.device)


def _cmd_infer(a) -> int:
    from imaging_core.bundle.infer import infer_file
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    out = infer_file(a.bundle, a.input, a.out, device=a.device, progress=not a.quiet, modality=a.modality,
                     scheme=MANIFEST_SIGNATURES)
    print(str(out))
    return 0


def _cmd_verify(a) -> int:
    from fl_common.crypto.signing import MANIFEST_SIGNATURES
    from imaging_core.bundle.verify import verify_bundle
    problems = verify_bundle(a.bundle, public_key=a.public_key, strict=a.strict, scheme=MANIFEST_SIGNATURES)
    for p in problems:
        print(p, file=sys.stderr)
    print(json.dumps({"bundle": a.bundle, "ok": not problems, "problems": problems}))
    return 0 if not problems else 3


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fedvox", description="Federated 3D medical image segmentation")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("inspect", help="describe a NIfTI/NRRD file, DICOM series or dataset.json as JSON")
    p.add_argument("path")
    p.add_argument("--compact", action="store_true")
    p.set_defaults(fn=_cmd_inspect)

    for name, fn, helptext in (("prepare", _cmd_prepare, "generate sites_example and build each site's cache"),
                               ("demo", _cmd_demo, "run the example federation end to end on this machine")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--out" if name == "prepare" else "--work", default="work",
                       help="work directory (created)")
        p.add_argument("--zoom", type=float, default=1.0, help="example size knob (divides voxel sizes)")
        p.add_argument("--cases", type=float, default=1.0, help="multiply example case counts")
        p.add_argument("--seed", type=int, default=0)
        if name == "prepare":
            p.add_argument("--workers", type=int, default=0)
        else:
            p.add_argument("--rounds", type=int, default=None, help="override the federation's rounds")
            p.add_argument("--federation", default=None,
                           help="your own federation TOML naming site data roots (default: sites_example)")
            p.add_argument("--data-base", default=None, help="base of relative data roots in --federation")
            p.add_argument("--no-secure-aggregation", action="store_true",
                           help="send deltas unmasked (development only)")
        p.set_defaults(fn=fn)

    p = sub.add_parser("train", help="local-only (one site) or pooled baseline, no federation")
    p.add_argument("--site", default="pooled", help="a site name, or 'pooled' (all sites' data together)")
    p.add_argument("--federation", default=None, help="federation TOML (default: sites_example)")
    p.add_argument("--data-base", default=None, help="base directory of relative site data roots")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=_cmd_train)

    p = sub.add_parser("provision", help="federation CA, server certificate and one startup kit per site")
    p.add_argument("--out", required=True)
    p.add_argument("--sites", nargs="+", required=True, help="site names (space or comma separated)")
    p.add_argument("--host", action="append", help="SuperLink host name/IP for the certificate (repeatable)")
    p.add_argument("--name", default="fedvox", help="federation name")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=_cmd_provision)

    p = sub.add_parser("server", help="run the SuperLink (TLS + node auth) and the federated run")
    p.add_argument("--provision", required=True, help="directory written by `fedvox provision`")
    p.add_argument("--federation", required=True, help="federation TOML")
    p.add_argument("--data-base", default=None, help="base of the coordinator's relative data root")
    p.add_argument("--run-dir", required=True)
    p.add_argument("--work", default="work/server")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--connect-timeout", type=float, default=1800.0, help="wait this long for min_sites")
    p.add_argument("--timeout", type=float, default=24 * 3600.0)
    p.add_argument("--insecure", action="store_true", help="no TLS, no node auth (local development only)")
    p.add_argument("--no-secure-aggregation", action="store_true")
    p.set_defaults(fn=_cmd_server)

    p = sub.add_parser("site", help="run this hospital's site worker and SuperNode")
    p.add_argument("--kit", required=True, help="this site's startup kit")
    p.add_argument("--data", required=True, help="this site's data root (holds dataset.json)")
    p.add_argument("--federation", default=None, help="federation TOML (default: KIT/federation.toml)")
    p.add_argument("--work", default="work/site")
    p.add_argument("--superlink", default=None, help="override the kit's SuperLink address")
    p.add_argument("--device", default=None)
    p.add_argument("--insecure", action="store_true")
    p.set_defaults(fn=_cmd_site)

    p = sub.add_parser("report", help="per-site vs global tables, CSV/JSON and PNG plots of a run",
                       add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=lambda a: __import__("fl_server.report", fromlist=["x"]).report_main(a.args))

    p = sub.add_parser("export", help="export a run's global model as a signed MONAI bundle", add_help=False)
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(fn=lambda a: __import__("fl_server.export", fromlist=["x"]).export_main(a.args))

    p = sub.add_parser("infer", help="segment a NIfTI file or DICOM series with a bundle")
    p.add_argument("bundle")
    p.add_argument("input")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--modality", default=None)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(fn=_cmd_infer)

    p = sub.add_parser("bundle", help="bundle tools")
    bsub = p.add_subparsers(dest="bundle_cmd", required=True)
    q = bsub.add_parser("verify", help="check a bundle's signed manifest; names changed or added files")
    q.add_argument("bundle")
    q.add_argument("--public-key", default=None, help="federation certificate or public key")
    q.add_argument("--strict", action="store_true")
    q.set_defaults(fn=_cmd_verify)

    p = sub.add_parser("metrics", help="Dice / HD95 / ASSD of a predicted label file against ground truth")
    p.add_argument("pred")
    p.add_argument("gt")
    p.add_argument("--spacing", nargs=3, default=None, help="override the files' voxel spacing (mm)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--compact", action="store_true")
    p.set_defaults(fn=_cmd_metrics)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    from imaging_core.errors import ImagingError
    try:
        return int(a.fn(a) or 0)
    except ImagingError as e:
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
