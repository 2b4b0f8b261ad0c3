"""The site worker in-process and over its Unix socket, and the shim's imports."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import numpy as np
import pytest



@pytest.fixture(scope="module")
def worker(tiny_worker):
    return tiny_worker


def _weights(w):
    from imaging_core.task import float_state
    return {k: v.numpy() for k, v in float_state(w.net).items()}


def test_train_returns_a_nonzero_delta_and_replays_identically(worker):
    w0 = _weights(worker)
    cfg = {"local_epochs": 1, "local_baseline": True}
    delta, weight, metrics = worker.train(1, w0, cfg)
    assert list(delta) == list(w0) and weight == len(worker.data.cases("training"))
    assert sum(float(np.abs(d).sum()) for d in delta.values()) > 0
    assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["local_train_loss"])
    again, _, _ = worker.train(1, w0, cfg)  # a replayed round (server restart) gives the same update
    for k in delta:
        np.testing.assert_allclose(again[k], delta[k], atol=1e-6)
    scores, n = worker.evaluate(1, w0, cfg)
    assert n == len(worker.data.cases("validation"))
    assert 0 <= scores["global/dice_fg_mean"] <= 1 and 0 <= scores["local/dice_fg_mean"] <= 1


def test_kept_site_optimizer_carries_moments_and_replays(worker):
    w0 = _weights(worker)
    cfg = {"local_epochs": 1, "local_baseline": False, "keep_site_optimizer": True}
    worker.train(1, w0, cfg)
    saved = worker._opt_path(1)
    assert saved.exists()
    kept, _, _ = worker.train(2, w0, cfg)
    fresh, _, _ = worker.train(2, w0, {**cfg, "keep_site_optimizer": False})
    # round 2 starts from round 1's moments, so its update differs from a fresh optimizer's...
    assert max(float(np.abs(kept[k] - fresh[k]).max()) for k in kept) > 1e-6
    # ...and a replay of round 2 reads the same file and gives the same update
    again, _, _ = worker.train(2, w0, cfg)
    for k in kept:
        np.testing.assert_allclose(again[k], kept[k], atol=1e-6)


def test_wrong_weights_are_refused(worker):
    w0 = _weights(worker)
    w0.pop(next(iter(w0)))
    with pytest.raises(ValueError, match="do not match"):
        worker.train(2, w0, {"local_baseline": False})


def test_served_on_a_0600_unix_socket(worker, tmp_path):
    from fl_client.worker_client import WorkerClient, WorkerError
    from fl_client.worker_server import serve
    sock = tmp_path / "w.sock"
    server = serve(worker, sock)
    try:
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(sock).st_mode)
        with WorkerClient(sock) as c:
            st = c.status()
            assert st["site"] == worker.name and st["num_train"] > 0
            w0 = _weights(worker)
            delta, weight, _ = c.train("run", 3, w0, {"local_baseline": False})
            assert {k: v.shape for k, v in delta.items()} == {k: v.shape for k, v in w0.items()}
            bad = dict(w0)
            bad.pop(next(iter(bad)))
            # the worker stays up and names the step only (the exception text stays in its log)
            with pytest.raises(WorkerError, match="train round 4 failed"):
                c.train("run", 4, bad, {})
            assert c.status()["site"] == worker.name
    finally:
        server.stop(0)


def test_the_clientapp_shim_imports_no_torch():
    code = ("import sys, fl_client.client_app, fl_client.secagg; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
