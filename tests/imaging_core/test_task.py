"""Task: the one evaluation path. evaluate with a post-processing chain equals
applying the chain by hand; predict agrees with evaluate; every evaluator (the
site worker, the coordinator, baselines, the trainer) uses the same precision."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imaging_core.config import ImagingConfig
from imaging_core.metrics import case_metrics, flat_scores, summarize
from imaging_core.task import Evaluation, Task, float_state


def _cfg(chain=(), amp="none") -> ImagingConfig:
    return ImagingConfig().updated({
        "model": {"channels": [4, 8], "strides": [2]}, "labels": {"0": "bg", "1": "organ", "2": "lesion"},
        "sampling": {"patch_size": [16, 16, 16]}, "train": {"overlap": 0.25, "sw_batch_size": 2, "amp": amp},
        "postprocess": {"chain": list(chain)}})


@pytest.fixture(scope="module")
def cases(two_cases):
    return two_cases


def _by_hand(net, case, steps):
    from imaging_core.inference.sliding_window import sliding_window_inference
    from imaging_core.postprocess.chain import postprocess_probs
    img = case._item["image"].array
    logits = sliding_window_inference(torch.from_numpy(img)[None], (16, 16, 16), net.eval(), sw_batch_size=2,
                                      overlap=0.25, mode="gaussian")
    probs = torch.softmax(logits[0], 0).numpy()
    image01 = (img[0] - img[0].min()) / np.ptp(img[0])
    pred = postprocess_probs(probs, image01[None], {"chain": steps}) if steps else probs.argmax(0)
    return pred, case_metrics(pred, case._item["label"].array[0], 3, spacing=(2.0, 2.0, 3.0))


@pytest.mark.parametrize("steps", [[], ["largest_component"], ["crf", "largest_component"]])
def test_evaluate_with_a_chain_equals_the_chain_by_hand(cases, steps):
    task = Task(_cfg(steps))
    net = task.build_net(seed=0)
    ev = task.evaluate(net, cases)
    assert isinstance(ev, Evaluation) and [r["case_id"] for r in ev.per_case] == ["c0", "c1"]
    for row, case in zip(ev.per_case, cases):
        pred, want = _by_hand(net, case, steps)
        assert row["space"] == "preprocessed"  # an in-memory case names no label file
        assert json.dumps({k: row[k] for k in want}, sort_keys=True) == json.dumps(want, sort_keys=True)
        assert set(row) - set(want) == {"case_id", "space", "dice_preprocessed", "candidates"}
        # the candidates: the chain's own label step is "keep the largest", so its figure is the row's
        assert row["dice_preprocessed"] == want["dice"]
        assert row["candidates"]["raw" if not steps else "largest"] == want["dice"]
        np.testing.assert_array_equal(task.predict(net, case._item["image"].array), pred)  # predict agrees
    assert ev.summary == summarize(ev.per_case, 3) and ev.space == "preprocessed"
    flat = flat_scores(ev.summary, 3)
    assert {k: ev.scores[k] for k in flat} == flat and set(ev.scores) - set(flat) == {
        "raw_dice_1", "raw_dice_2", "lcc_dice_1", "lcc_dice_2"}


def test_a_bad_chain_fails_when_the_task_is_made():
    with pytest.raises(ValueError, match="no_such_step"):
        Task(_cfg(["no_such_step"]))


def test_one_precision_for_every_evaluator(cases, tmp_path, monkeypatch):
    """The worker and the coordinator both evaluate through Task.evaluate, under
    Task.eval_amp: the [train] amp setting resolved for the device ("auto" via the
    cached probe), so the same model scores the same everywhere."""
    from imaging_core.train import amp as A
    monkeypatch.setenv("FEDVOX_CACHE", str(tmp_path))
    key = A.machine_key(torch.device("cpu"))
    (tmp_path / "amp.json").write_text(json.dumps({key: {"amp": "bf16", "probe_s": 0.1}}))
    import imaging_core.inference.sliding_window as sw
    seen, real = [], sw._autocast

    def spy(device, amp):
        seen.append(amp)
        return real(device, amp)

    monkeypatch.setattr(sw, "_autocast", spy)
    auto, fp32 = Task(_cfg(amp="auto")), Task(_cfg(amp="none"))
    assert auto.eval_amp == "bf16" and fp32.eval_amp is None
    assert auto.amp_record()["source"] == "cache" and fp32.amp_record() == \
        {"source": "config", "setting": "none", "amp": None}
    net = auto.build_net(seed=0)
    a, b = auto.evaluate(net, cases), Task(_cfg(amp="auto")).evaluate(net, cases)
    assert json.dumps(a.per_case) == json.dumps(b.per_case)  # two evaluators, one answer
    assert seen and set(seen) == {"bf16"}  # the sliding window ran under the one policy


def test_worker_and_central_evaluation_share_the_task_path():
    import inspect
    from fl_client.worker import SiteWorker
    from fl_server.central_eval import CentralEvaluator
    for fn in (SiteWorker.evaluate, CentralEvaluator.evaluate):
        src = inspect.getsource(fn)
        assert "self.task.evaluate(" in src and "evaluate_cases" not in src and "amp" not in src


def test_net_from_state_rebuilds_what_was_saved():
    task = Task(_cfg())
    net = task.build_net(seed=3)
    state = {k: v.numpy() for k, v in float_state(net).items()}
    again = task.net_from_state(state, model=task.cfg.model.model_dump())
    for k, v in float_state(again).items():
        assert torch.equal(v, float_state(net)[k])
    assert not again.training
