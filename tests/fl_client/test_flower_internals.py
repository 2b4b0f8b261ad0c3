"""Loud pins on the Flower internals fl_client.runner relies on (flwr is pinned
exactly in pyproject.toml). When an upgrade changes one of them, the test that
fails names the internal: read the new flwr/supernode/runtime/run_clientapp.py
and flwr/supercore/superexec/run_superexec.py, adapt fl_client.runner, then
move the pin."""
from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLWR_PIN = re.compile(r"^flwr==(\S+)$")


def _internal(path: str):
    """``module.attr[.attr]`` (the longest importable module prefix), or a failure naming it."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for a in parts[cut:]:
                obj = getattr(obj, a)
            return obj
        except AttributeError as e:
            pytest.fail(f"Flower internal {path} is gone ({e}): fl_client.runner needs it")
    pytest.fail(f"Flower internal {path} is gone (no module): fl_client.runner needs it")


def _params(path: str, want: list[str]) -> None:
    got = list(inspect.signature(_internal(path)).parameters)
    assert got[:len(want)] == want, f"Flower internal {path} changed its signature: {got}, runner calls {want}"


def test_flwr_is_pinned_exactly_to_the_installed_version():
    import flwr
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := FLWR_PIN.match(d.replace(" ", "")))]
    assert pins, "pyproject.toml must pin flwr exactly (flwr==X.Y.Z): fl_client.runner uses its internals"
    assert pins == [flwr.__version__], f"flwr {flwr.__version__} installed, pyproject pins {pins}"


@pytest.mark.parametrize("path, params", [
    ("flwr.supernode.runtime.run_clientapp.pull_task_input", ["client"]),  # fl_client.runner.pull_input mirrors it
    ("flwr.supercore.inflatable.inflatable_utils.pull_and_inflate_object_from_tree",
     ["object_tree", "pull_object_fn", "confirm_object_received_fn", "return_type", "max_concurrent_pulls",
      "max_time", "max_tries_per_object", "initial_backoff", "backoff_cap"]),
    ("flwr.supercore.inflatable.inflatable_protobuf_utils.make_pull_object_fn_protobuf",
     ["pull_object_protobuf", "node", "run_id"]),
    ("flwr.supercore.inflatable.inflatable_protobuf_utils.make_confirm_message_received_fn_protobuf",
     ["confirm_message_received_protobuf", "node", "run_id"]),
    ("flwr.supernode.runtime.run_clientapp.push_message", ["client", "message", "context"]),
    ("flwr.supernode.runtime.run_clientapp.push_task_output", ["client", "context", "sub_status", "details"]),
    ("flwr.supercore.runtime.RuntimeHttpClient.from_server_address",
     ["server_address", "insecure", "root_certificates", "interceptors", "retry_invoker"]),
    ("flwr.supercore.interceptors.RuntimeTokenHttpInterceptor", ["token"]),
    ("flwr.supercore.interceptors.RuntimeVersionHttpInterceptor", ["component_name"]),
    ("flwr.supercore.interceptors.SuperExecAuthHttpInterceptor", ["master_secret", "protected_methods"]),
    ("flwr.supercore.retry.make_simple_http_retry_invoker", []),
    ("flwr.app.error.Error", ["code", "reason"]),
])
def test_functions_the_runner_calls_keep_their_signatures(path, params):
    _params(path, params)


def test_the_runtime_client_keeps_the_calls_the_runner_makes():
    cls = _internal("flwr.supercore.runtime.RuntimeHttpClient")
    for m in ("AcquireTask", "SendTaskHeartbeat", "PullTaskInput", "PullMessages", "PushMessages",
              "PushTaskOutput", "PullObject", "PushObject", "ConfirmMessageReceived", "close"):
        assert callable(getattr(cls, m, None)), f"Flower internal RuntimeHttpClient.{m} is gone"


@pytest.mark.parametrize("message, fields", [
    ("AcquireTaskRequest", {"supported_task_types", "agentapp_fab_hashes"}),
    ("AcquireTaskResponse", {"task", "token"}),
    ("SendTaskHeartbeatRequest", set()),
    ("SendTaskHeartbeatResponse", {"success"}),
    ("PullTaskInputResponse", {"context", "run", "fab", "task_id"}),
])
def test_runtime_proto_messages_keep_their_fields(message, fields):
    cls = _internal(f"flwr.proto.runtime_pb2.{message}")
    have = set(cls.DESCRIPTOR.fields_by_name)
    assert fields <= have, f"Flower proto flwr.proto.runtime_pb2.{message} lost {fields - have}"


def test_constants_and_types_the_runner_uses():
    assert _internal("flwr.supercore.constant.TaskType").CLIENT_APP == "flwr-clientapp"
    sub = _internal("flwr.common.constant.SubStatus")
    assert (sub.COMPLETED, sub.FAILED) == ("completed", "failed"), "Flower internal SubStatus changed"
    code = _internal("flwr.common.constant.ErrorCode")
    assert isinstance(code.LOAD_CLIENT_APP_EXCEPTION, int) and isinstance(code.CLIENT_APP_RAISED_EXCEPTION, int)
    assert {"hash_str", "content"} <= set(_internal("flwr.supercore.fab.Fab").__dataclass_fields__)
    from fl_client.runner import ACQUIRE_METHOD
    methods = _internal("flwr.supercore.superexec.run_superexec._SUPEREXEC_AUTH_METHODS")
    assert ACQUIRE_METHOD in methods, f"Flower signs {methods} with the SuperExec secret, runner signs {ACQUIRE_METHOD}"
    retry = _internal("flwr.supercore.retry.make_simple_http_retry_invoker")()
    assert retry.max_time is None, "Flower's HTTP retry invoker changed (the runner bounds its max_time)"
    from fl_client.runner import READY_LINE
    from fl_client.supernode import RUNNER_READY
    assert re.search(RUNNER_READY, READY_LINE)


def test_the_supernode_still_takes_the_flags_the_site_passes():
    src = inspect.getsource(importlib.import_module("flwr.supernode.cli.flower_supernode"))
    src += inspect.getsource(importlib.import_module("flwr.supercore.auth.superexec_secret"))
    for flag in ('"--isolation"', '"--superexec-auth-secret-file"'):
        assert flag in src, f"flower-supernode lost {flag}"
    assert _internal("flwr.common.constant.ISOLATION_MODE_PROCESS") == "process"


def test_the_supernode_waits_fl_client_supernode_main_shortens_are_still_there():
    # Flower 1.41's SuperNode waits a literal 3 s between empty pulls and 0.5 s while a reply
    # is on its way (no flag, no env var). fl_client.supernode_main shortens exactly those
    # through the module's `time` global. If this fails, Flower changed them: use its knob.
    import time as real_time
    mod = importlib.import_module("flwr.supernode.start_client_internal")
    src = inspect.getsource(mod)
    assert src.count("time.sleep(3)") == 1, "the SuperNode's idle poll changed (fl_client.supernode_main)"
    assert src.count("time.sleep(0.5)") == 2, "the SuperNode's reply waits changed (fl_client.supernode_main)"
    assert mod.time is real_time, "start_client_internal no longer has `time` as a module global"
    assert mod.pull_objects is _internal("flwr.supercore.inflatable.inflatable_utils.pull_objects"), \
        "start_client_internal no longer calls inflatable_utils.pull_objects (fl_client.supernode_main)"
    assert "initial_backoff" not in src, "the SuperNode now passes its own object backoff: drop ours"
    _params("flwr.supercore.inflatable.inflatable_utils.pull_objects",
            ["object_ids", "pull_object_fn", "max_concurrent_pulls", "max_time", "max_tries_per_object",
             "initial_backoff", "backoff_cap"])
    assert _internal("flwr.supernode.cli.flower_supernode") is not None


def test_the_short_waits_shorten_only_flowers_literals():
    from fl_client import supernode_main as sm
    calls = []

    class Clock:
        def sleep(self, s):
            calls.append(s)
        monotonic = staticmethod(lambda: 1.0)

    w = sm._ShortWaits(Clock(), sm.SHORTER)
    for s in (3, 0.5, 1, 0.25):
        w.sleep(s)
    assert calls == [sm.IDLE_POLL_S, sm.REPLY_POLL_S, 1, 0.25]
    assert w.monotonic() == 1.0  # everything else passes through
    fake = type("M", (), {"time": object()})
    with pytest.raises(RuntimeError, match="no longer imports `time`"):
        sm.patch(fake)
    from fl_common import flower
    seen = {}
    mod = type("M", (), {"time": sm._time, "pull_objects": staticmethod(lambda ids, **kw: seen.update(kw))})
    sm.patch(mod)
    sm.patch(mod)  # twice: wrapped once
    mod.pull_objects(["x"], pull_object_fn=len)
    assert seen == {"pull_object_fn": len, "initial_backoff": flower.OBJECT_BACKOFF_S,
                    "backoff_cap": flower.OBJECT_BACKOFF_CAP_S}
    with pytest.raises(RuntimeError, match="no longer imports `pull_objects`"):
        flower.sooner_object_pulls(type("N", (), {"__name__": "n"}))


def test_the_coordinators_grid_still_pulls_replies_through_pull_objects():
    # fl_server.server_app shortens the grid's reply-object backoff the same way
    src = inspect.getsource(importlib.import_module("flwr.superlink.grid.http_grid"))
    mod = importlib.import_module("flwr.superlink.grid.http_grid")
    assert mod.pull_objects is _internal("flwr.supercore.inflatable.inflatable_utils.pull_objects") or \
        getattr(mod.pull_objects, "fedvox_sooner", False), "http_grid no longer calls inflatable_utils.pull_objects"
    assert "initial_backoff" not in src, "the grid now passes its own object backoff: drop ours (fl_server.server_app)"


def test_the_supernode_entry_point_is_flower_supernode():
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-P", "-m", "fl_client.supernode_main", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--isolation" in out.stdout and "--superlink" in out.stdout


def test_the_task_input_pull_the_runner_mirrors_is_unchanged():
    # fl_client.runner.Runner.pull_input is flwr's pull_task_input with a bounded, faster
    # object pull. If Flower changed that function, re-read it and mirror the change there.
    import hashlib
    src = inspect.getsource(_internal("flwr.supernode.runtime.run_clientapp.pull_task_input"))
    assert hashlib.sha256(src.encode()).hexdigest() == (
        "5607a23e1673ee876930c1b35685b8dfdfd8b3776a436560b0467042e15fc695"), \
        "flwr's run_clientapp.pull_task_input changed: mirror it in fl_client.runner.Runner.pull_input"
    assert _internal("flwr.supercore.task_identity.TaskIdentity") is not None


def test_a_restarted_supernode_is_refused_with_the_message_the_site_retries_on():
    from fl_client.supernode import ACTIVATE_REFUSED
    src = inspect.getsource(importlib.import_module("flwr.supercore.error.catalog"))
    assert f'"{ACTIVATE_REFUSED}.' in src, "Flower's SuperNode activation refusal changed (fl_client.supernode)"
    assert _internal("flwr.common.constant.HEARTBEAT_DEFAULT_INTERVAL") * \
        _internal("flwr.common.constant.HEARTBEAT_PATIENCE") <= 120, "a restarted site retries for 150 s"
