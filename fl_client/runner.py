"""The site's long-lived ClientApp runner: one process in front of a SuperNode
started with `--isolation process`, instead of Flower's SuperExec (which
starts a new `flwr-clientapp` process, imports and all, for every message).

In a loop it acquires each ClientApp task from the SuperNode's local Runtime
API (signed with the SuperExec auth secret the SuperNode was given, so no
other local process can take the site's tasks), pulls the task's inputs, and
CHECKS THE FAB (fl_client.fab_check) before anything else happens with it.
The FAB is never unpacked, put on sys.path or imported: the app that runs is
the installed `fl_client.client_app:app`, imported once at start from this
site's own installation. A refused FAB gets an error reply naming the reason
(and a log line); the runner goes on. What each task does mirrors flwr's own
`flwr.supernode.runtime.run_clientapp.run_clientapp` (flwr pinned exactly;
tests/fl_client/test_flower_internals.py names every internal used here).

Run: python -P -m fl_client.runner --runtime-api 127.0.0.1:PORT
--secret-file F --supernode-pid PID (fl_client.supernode starts, supervises
and restarts it). -P keeps the working directory off sys.path.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from flwr.app import Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
from flwr.proto.runtime_pb2 import (AcquireTaskRequest, PullAppMessagesRequest,  # pylint: disable=E0611
                                    PullTaskInputRequest, SendTaskHeartbeatRequest)
from flwr.supercore.constant import TaskType
from flwr.supercore.interceptors import (RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor,
                                         SuperExecAuthHttpInterceptor)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.inflatable.inflatable_protobuf_utils import (make_confirm_message_received_fn_protobuf,
                                                                 make_pull_object_fn_protobuf)
from flwr.supercore.inflatable.inflatable_utils import (ObjectPullError, ObjectUnavailableError,
                                                        pull_and_inflate_object_from_tree)
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from .fab_check import FabRefused, check_fab

log = logging.getLogger("fedvox.runner")
ACQUIRE_METHOD = "/flwr.proto.Runtime/AcquireTask"  # the method the SuperNode checks the secret on
POLL_S = 0.05          # idle wait between AcquireTask calls (a local request; adds <= 50 ms to a stage)
HEARTBEAT_S = 10.0     # a task token lapses after ~60 s without one (HEARTBEAT_PATIENCE x 30 s)
READY_LINE = "fedvox runner: ready"
# The SuperNode makes a task acquirable before it has downloaded the message's objects
# from the SuperLink. Flower's own pull then waits 1, 2, 4... s between tries; ours
# starts at INPUT_BACKOFF_S. A download the SuperNode abandoned (the SuperLink restarted,
# the run stopped) never completes and Flower leaves its task open: once the SuperNode
# offers another task (it takes one message at a time) or after INPUT_STALL_S without a
# new object, this task fails and the runner takes the next.
INPUT_BACKOFF_S, INPUT_BACKOFF_CAP_S = 0.02, 0.5
INPUT_STALL_S = 300.0
MOVED_ON_CHECK_S = 2.0


def _client(address: str, interceptors: list, max_time: float) -> RuntimeHttpClient:
    # flwr's invoker retries forever by default: bound it so the loop regains control
    # (a 401 makes it SIGINT this process: the keeper then restarts the runner).
    retry = make_simple_http_retry_invoker()
    retry.max_time = max_time
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True,
                                                 root_certificates=None, interceptors=interceptors,
                                                 retry_invoker=retry)


class _Heartbeat:
    """Keeps a task's token alive while its handler runs (the SuperNode expires
    silent tasks). Unlike flwr's HeartbeatSender it never signals the process:
    a lapsed token only fails this task."""

    def __init__(self, client: RuntimeHttpClient, every: float = HEARTBEAT_S):
        self.client, self.every = client, every
        self.lapsed = False
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, daemon=True, name="task-heartbeat")

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                if not self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success:
                    self.lapsed = True
                    log.error("task heartbeat refused: the SuperNode dropped this task")
                    return
            except Exception as e:  # noqa: BLE001 - a missed beat is retried next period
                log.warning("task heartbeat failed: %s", e)

    def __enter__(self):
        self._th.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._th.join(timeout=5)


class _StallGuard:
    """Wraps the pull of one object: gives up (ObjectPullError) when nothing has
    arrived for a while and the SuperNode has moved on, or for INPUT_STALL_S."""

    def __init__(self, pull, moved_on, stall_s: float = INPUT_STALL_S, check_s: float = MOVED_ON_CHECK_S):
        self.pull, self.moved_on, self.stall_s, self.check_s = pull, moved_on, stall_s, check_s
        self.last = self.checked = time.monotonic()
        self.lock = threading.Lock()

    def __call__(self, object_id: str) -> bytes:
        try:
            out = self.pull(object_id)
        except ObjectUnavailableError:
            with self.lock:  # the pull runs on several threads; ask the SuperNode from one
                now = time.monotonic()
                if now - self.last > self.stall_s:
                    raise ObjectPullError(object_id, f"nothing arrived for {self.stall_s:.0f} s") from None
                if now - self.last > self.check_s and now - self.checked > self.check_s:
                    self.checked = now
                    if self.moved_on():
                        raise ObjectPullError(object_id, "the SuperNode abandoned this message") from None
            raise
        self.last = time.monotonic()
        return out


class Runner:
    """Acquire -> check FAB -> installed ClientApp -> push, one task at a time."""

    def __init__(self, address: str, secret: bytes | None, app=None, check=check_fab):
        """``app``/``check``: the installed shim and the fedvox FAB pin unless a
        local caller (a benchmark) passes its own; never chosen by the FAB."""
        if app is None:
            from fl_client.client_app import app  # the installed shim, imported once
        self.address, self.app, self.check = address, app, check
        icp = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if secret:
            icp.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_METHOD}))
        self.acquirer = _client(address, icp, max_time=10.0)
        self.tasks_done = 0
        self.pending: str | None = None  # a task acquired while the previous one was stuck

    def acquire(self) -> str | None:
        res = self.acquirer.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return res.token if res.HasField("task") and res.token else None

    def _moved_on(self) -> bool:
        """Whether the SuperNode offers another task (keeps its token for next)."""
        if self.pending is None:
            try:
                self.pending = self.acquire()
            except Exception:  # noqa: BLE001 - cannot tell: keep waiting
                return False
        return self.pending is not None

    def pull_input(self, client: RuntimeHttpClient):
        """flwr's run_clientapp.pull_task_input, with its object pull bounded
        (_StallGuard) and retried sooner (INPUT_BACKOFF_S)."""
        res = client.PullTaskInput(PullTaskInputRequest())
        # replies built in this process take their source task/run/node from here
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = (res.task_id, res.run.run_id,
                                                                           res.context.node_id)
        context = context_from_proto(res.context)
        run, fab = run_from_proto(res.run), fab_from_proto(res.fab)
        msgs = client.PullMessages(PullAppMessagesRequest())
        if not msgs.messages_list:
            raise RuntimeError("no message from the SuperNode's Runtime API")
        node, tree = Node(node_id=context.node_id), msgs.message_object_trees[0]
        guard = _StallGuard(make_pull_object_fn_protobuf(client.PullObject, node, context.run_id), self._moved_on)
        message = pull_and_inflate_object_from_tree(
            tree, guard, make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node,
                                                                  context.run_id),
            return_type=Message, max_tries_per_object=None, initial_backoff=INPUT_BACKOFF_S,
            backoff_cap=INPUT_BACKOFF_CAP_S)
        message.metadata.__dict__["_message_id"] = tree.object_id  # as flwr: not part of the deflated message
        return message, context, run, fab

    def run_task(self, token: str) -> str:
        """Run one acquired task; returns its sub-status. Never raises for a bad task."""
        t0 = time.monotonic()
        client = _client(self.address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                                        RuntimeTokenHttpInterceptor(token)], max_time=60.0)
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        marks = {}  # where the task's time went: the log line says
        tick = time.monotonic
        try:
            with _Heartbeat(client) as hb:
                try:
                    message, context, _run, fab = self.pull_input(client)
                    marks["input"] = tick()
                    self.check(fab.content, fab.hash_str)
                    reply = self.app(message=message, context=context)
                    marks["app"] = tick()
                    status, details = SubStatus.COMPLETED, ""
                except FabRefused as e:
                    log.error("run %s: %s", getattr(context, "run_id", "?"), e)
                    details = f"fedvox site: {e}"
                    if message is not None:
                        reply = Message(Error(code=ErrorCode.LOAD_CLIENT_APP_EXCEPTION, reason=details),
                                        reply_to=message)
                except Exception as e:  # noqa: BLE001 - one bad task must not take the site down
                    log.exception("ClientApp raised")
                    details = f"{type(e)}:<'{e}'>"
                    if message is not None:
                        reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                                        reply_to=message)
                if hb.lapsed:
                    status, details = SubStatus.FAILED, "task token lapsed"
                if reply is not None and context is not None:
                    try:
                        push_message(client, reply, context)
                    except Exception:  # noqa: BLE001
                        log.exception("could not push the reply")
                        status = SubStatus.FAILED
            push_task_output(client=client, context=context, sub_status=status, details=details)
        finally:
            client.close()
        self.tasks_done += 1
        mtype = message.metadata.message_type if message is not None else "?"
        t1, t_in, t_app = time.monotonic(), marks.get("input", t0), marks.get("app", marks.get("input", t0))
        log.info("task %s %s in %.3f s (input %.3f, app %.3f, output %.3f)", mtype, status, t1 - t0,
                 t_in - t0, t_app - t_in, t1 - t_app)
        return status

    def serve(self, supernode_pid: int | None = None, max_tasks: int | None = None) -> int:
        """Loop until the SuperNode is gone (0), ``max_tasks`` are done, or SIGTERM."""
        print(READY_LINE, flush=True)
        while max_tasks is None or self.tasks_done < max_tasks:
            if supernode_pid is not None and not _alive(supernode_pid):
                log.info("SuperNode %d is gone; runner exits", supernode_pid)
                return 0
            try:
                token, self.pending = self.pending or self.acquire(), None
            except Exception as e:  # noqa: BLE001 - SuperNode restarting: retry, bounded by its pid
                log.warning("AcquireTask failed: %s", e)
                time.sleep(1.0)
                continue
            if token is None:
                time.sleep(POLL_S)
                continue
            try:
                self.run_task(token)
            except Exception:  # noqa: BLE001 - e.g. the run was stopped mid-task: next task
                log.exception("task ended abnormally")
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None, app=None, check=check_fab) -> int:
    ap = argparse.ArgumentParser(prog="python -P -m fl_client.runner",
                                 description="fedvox's long-lived ClientApp runner for one SuperNode.")
    ap.add_argument("--runtime-api", required=True, help="the SuperNode's Runtime API, HOST:PORT")
    ap.add_argument("--secret-file", type=Path, help="the SuperExec auth secret the SuperNode was given")
    ap.add_argument("--supernode-pid", type=int, help="exit once this process is gone")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # it logs every poll at INFO
    secret = None
    if a.secret_file is not None:
        try:
            secret = a.secret_file.read_bytes()
        except OSError as e:
            print(f"fedvox runner: cannot read {a.secret_file}: {e}", file=sys.stderr)
            return 2
    return Runner(a.runtime_api, secret, app, check).serve(a.supernode_pid)


if __name__ == "__main__":
    sys.exit(main())
