"""Serve a SiteWorker over gRPC on a Unix-domain socket (0600, never a TCP port).

    python -m fl_client.worker_server --federation FED.toml --site SITE.toml \
        --work WORKDIR --socket WORKDIR/worker.sock
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc

from protos import site_worker_pb2 as pb
from protos import site_worker_pb2_grpc as pbg

from fl_common.keys import WORKER_API_VERSION as API_VERSION
from fl_common.keys import WORKER_MAX_MESSAGE as MAX_MESSAGE
from fl_common.tensors import from_proto, to_proto

log = logging.getLogger("fedvox.worker")


class _Servicer(pbg.SiteWorkerServicer):
    def __init__(self, worker):
        self.worker = worker
        self.lock = threading.Lock()  # one round's work at a time; the model is shared

    def _check(self, request, context):
        if request.version != API_VERSION:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"worker API version {request.version} unsupported (this worker: {API_VERSION})")

    def _fail(self, context, what: str, e: Exception):
        # the traceback stays in the worker log; the caller gets the step only (no
        # exception text: it may carry a path or a value of the site's data)
        log.exception("%s failed", what)
        context.abort(grpc.StatusCode.INTERNAL, f"{what} failed (see the worker log)")

    def Status(self, request, context):
        self._check(request, context)
        st = self.worker.status()
        return pb.StatusReply(version=API_VERSION, site=st["site"], num_train=st["num_train"],
                              num_val=st["num_val"], skipped_json=json.dumps(st["skipped"]),
                              model_config_json=json.dumps(st["model"]))

    def Train(self, request, context):
        self._check(request, context)
        log.info("train round %d: start", request.server_round)
        with self.lock:
            try:
                delta, weight, metrics = self.worker.train(request.server_round, from_proto(request.weights),
                                                           json.loads(request.config_json or "{}"))
            except Exception as e:  # noqa: BLE001 - reported to the caller, worker stays up
                self._fail(context, f"train round {request.server_round}", e)
        return pb.TrainReply(version=API_VERSION, server_round=request.server_round, delta=to_proto(delta),
                             num_examples=weight, metrics_json=json.dumps(metrics))

    def Evaluate(self, request, context):
        self._check(request, context)
        with self.lock:
            try:
                metrics, n = self.worker.evaluate(request.server_round, from_proto(request.weights),
                                                  json.loads(request.config_json or "{}"))
            except Exception as e:  # noqa: BLE001
                self._fail(context, f"evaluate round {request.server_round}", e)
        return pb.EvaluateReply(version=API_VERSION, server_round=request.server_round,
                                metrics_json=json.dumps(metrics), num_examples=n)


def serve(worker, socket_path: str | Path) -> grpc.Server:
    """Start serving; the socket file is created with mode 0600 (umask during bind)."""
    socket_path = Path(socket_path)
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                                  ("grpc.max_send_message_length", MAX_MESSAGE)])
    pbg.add_SiteWorkerServicer_to_server(_Servicer(worker), server)
    old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
    try:
        server.add_insecure_port(f"unix:{socket_path}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    return server


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fedvox-site-worker")
    ap.add_argument("--federation", required=True)
    ap.add_argument("--site", required=True)
    ap.add_argument("--data-base", default=None, help="base for a relative data_root")
    ap.add_argument("--data-root", default=None, help="override the site config's data_root")
    ap.add_argument("--work", required=True)
    ap.add_argument("--socket", required=True)
    ap.add_argument("--device", default=None)
    ap.add_argument("--ready-file", default=None, help="written once the worker serves")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from fl_common.config import load_federation, load_site
    from imaging_core.errors import ImagingError
    from .worker import SiteWorker
    fed = load_federation(a.federation, data_base=a.data_base, require_sites=False)
    site = load_site(a.site, data_base=a.data_base)
    if a.data_root:
        site = site.with_root(Path(a.data_root).resolve())
    try:
        worker = SiteWorker(fed, site, a.work, a.device)
    except ImagingError as e:  # e.g. the datalist is missing: one line, not a traceback
        print(f"fedvox site worker {site.name}: {e}", file=sys.stderr)
        return 2
    serve_until_signalled(worker, a.socket, a.ready_file)
    return 0


def serve_until_signalled(worker, socket_path: str, ready_file: str | None = None) -> None:
    """Serve ``worker`` on ``socket_path`` until SIGTERM/SIGINT; ``ready_file``
    (the worker's status as JSON) tells a launcher that it serves."""
    server = serve(worker, socket_path)
    log.info("%s worker serving on %s", worker.name, socket_path)
    if ready_file:
        Path(ready_file).write_text(json.dumps(worker.status()))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=2).wait(5)
    worker.close()  # a local-only baseline still training is written out, not cut off


if __name__ == "__main__":
    sys.exit(main())
