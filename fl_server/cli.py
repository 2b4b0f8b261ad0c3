"""The one `fedvox` command line. Subcommands import their heavy modules lazily
so `fedvox --help` and light commands start fast."""
from __future__ import annotations

import argparse
import json
import os
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
    return run_demo(a.work, zoom=a.zoom, cases=a.cases, seed=a.seed, epochs=a.epochs)


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
            p.add_argument("--epochs", type=int, default=2)
        p.set_defaults(fn=fn)
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
    except (OSError, ValueError) as e:
        if a.debug:
            raise
        print(f"fedvox {a.cmd}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
