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
    # the local-only baseline trains after the reply: its loss comes with the evaluation
    assert np.isfinite(metrics["train_loss"]) and "local_train_loss" not in metrics
    again, _, _ = worker.train(1, w0, cfg)  # a replayed round (server restart) gives the same update
    for k in delta:
        np.testing.assert_allclose(again[k], delta[k], atol=1e-6)
    scores, n = worker.evaluate(1, w0, cfg)
    assert n == len(worker.data.cases("validation")) and np.isfinite(scores["local_train_loss"])
    assert 0 <= scores["global/dice_fg_mean"] <= 1 and 0 <= scores["local/dice_fg_mean"] <= 1


def _state_of(path):
    from imaging_core.train.checkpoint import load_checkpoint
    st = load_checkpoint(path)
    return st["round"], {k: v.numpy().copy() for k, v in st["net"].items() if v.is_floating_point()}


def test_local_only_metrics_of_round_r_are_of_the_model_trained_in_round_r_in_the_background(worker):
    """The baseline of round r trains after the train reply, from round r-1's file; the
    evaluate request of round r evaluates exactly that model (a recording wrapper on the
    one evaluation path says which weights it got), and the background result equals an
    inline training of the same round (same seed, same start: determinism kept)."""
    from imaging_core.task import float_state
    cfg = {"local_epochs": 1, "local_baseline": True}
    evaluated, real = [], worker.task.evaluate

    def recording(net, cases, **kw):
        evaluated.append({k: v.numpy().copy() for k, v in float_state(net).items()})
        return real(net, cases, **kw)
    worker.task.evaluate = recording
    try:
        w = _weights(worker)
        for r in (1, 2):
            delta, _, metrics = worker.train(r, w, cfg)
            assert "local_train_loss" not in metrics
            assert worker._local is not None and worker._local.round == r  # still in the background
            evaluated.clear()
            scores, _ = worker.evaluate(r, w, cfg)
            assert worker._local is None and np.isfinite(scores["local_train_loss"])
            saved_round, local = _state_of(worker._local_path(r))
            assert saved_round == r and len(evaluated) == 2   # the global model, then the local-only one
            for k in local:
                np.testing.assert_array_equal(evaluated[1][k], local[k])
            if r == 2:  # trained on from round 1's model, not from the global one again
                _, prev = _state_of(worker._local_path(1))
                assert max(float(np.abs(local[k] - prev[k]).max()) for k in local) > 0
            # the same round trained inline (as before the overlap) gives the same model
            worker._train_local_only(r, w, cfg)
            _, inline = _state_of(worker._local_path(r))
            for k in local:
                np.testing.assert_allclose(inline[k], local[k], atol=1e-6, err_msg=f"round {r} {k}")
            w = {k: w[k] + delta[k] for k in w}
    finally:
        worker.task.evaluate = real


def test_a_failed_local_only_training_gives_no_local_metrics_rather_than_an_older_models(worker, monkeypatch):
    cfg = {"local_epochs": 1, "local_baseline": True}
    w = _weights(worker)
    worker.train(1, w, cfg)
    worker.evaluate(1, w, cfg)
    assert worker._local_path(1).exists()

    def broken(*a):
        raise RuntimeError("disk full")
    monkeypatch.setattr(worker, "_train_local_only", broken)
    worker.train(2, w, cfg)   # the federated update is unaffected
    scores, _ = worker.evaluate(2, w, cfg)
    assert "global/dice_fg_mean" in scores and not any(k.startswith("local") for k in scores)
    final, _ = worker.evaluate(3, w, cfg)  # round 1's model is not reported as the latest local-only one
    assert not any(k.startswith("local") for k in final)
    monkeypatch.undo()
    worker.train(2, w, cfg)   # a replay trains it again
    scores, _ = worker.evaluate(2, w, cfg)
    assert "local/dice_fg_mean" in scores


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
