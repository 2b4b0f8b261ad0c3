"""Client side of the site worker API (no torch): what the ClientApp shim uses."""
from __future__ import annotations

import json
from pathlib import Path

import grpc

from protos import site_worker_pb2 as pb
from protos import site_worker_pb2_grpc as pbg

from fl_common.keys import WORKER_API_VERSION as API_VERSION
from fl_common.keys import WORKER_MAX_MESSAGE
from fl_common.tensors import from_proto, to_proto

_OPTS = [("grpc.max_receive_message_length", WORKER_MAX_MESSAGE),
         ("grpc.max_send_message_length", WORKER_MAX_MESSAGE)]


class WorkerError(RuntimeError):
    pass


class WorkerClient:
    def __init__(self, socket_path: str | Path, timeout: float = 3600.0):
        self.socket_path = Path(socket_path)
        if not self.socket_path.exists():
            raise WorkerError(f"site worker socket {self.socket_path} not found: is the worker running?")
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix:{self.socket_path}", options=_OPTS)
        self.stub = pbg.SiteWorkerStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, fn, req, timeout=None):
        try:
            return fn(req, timeout=timeout or self.timeout)
        except grpc.RpcError as e:
            raise WorkerError(f"site worker {self.socket_path}: {e.code().name}: {e.details()}") from None

    def status(self, timeout: float = 10.0) -> dict:
        r = self._call(self.stub.Status, pb.StatusRequest(version=API_VERSION), timeout)
        return {"site": r.site, "num_train": r.num_train, "num_val": r.num_val,
                "skipped": json.loads(r.skipped_json or "{}"), "model": json.loads(r.model_config_json or "{}")}

    def train(self, run_id: str, server_round: int, weights: dict, config: dict):
        r = self._call(self.stub.Train, pb.TrainRequest(version=API_VERSION, run_id=run_id,
                                                         server_round=server_round, weights=to_proto(weights),
                                                         config_json=json.dumps(config)))
        return from_proto(r.delta), r.num_examples, json.loads(r.metrics_json or "{}")

    def evaluate(self, run_id: str, server_round: int, weights: dict, config: dict):
        r = self._call(self.stub.Evaluate, pb.EvaluateRequest(version=API_VERSION, run_id=run_id,
                                                               server_round=server_round,
                                                               weights=to_proto(weights),
                                                               config_json=json.dumps(config)))
        return json.loads(r.metrics_json or "{}"), r.num_examples

    def local_model(self, run_id: str, server_round: int) -> dict:
        """The site's local-only model (over the Train RPC: fl_client.worker.SiteWorker.train)."""
        from fl_common.keys import LOCAL_MODEL, RUN_ID
        weights, _, _ = self.train(run_id, server_round, {}, {LOCAL_MODEL: True, RUN_ID: run_id})
        return weights
