"""evaluate_cases with a post-processing chain equals running the chain by hand
on the same network's output."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from imaging_core.inference.evaluate import evaluate_cases, predict_labels
from imaging_core.metrics import case_metrics
from imaging_core.nets import UNet3D


@pytest.fixture(scope="module")
def setup(two_cases):
    torch.manual_seed(0)
    net = UNet3D(in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1).eval()
    return net, two_cases


def _manual(net, case, steps):
    from imaging_core.inference.sliding_window import sliding_window_inference
    from imaging_core.postprocess.chain import postprocess_probs
    img = case._item["image"].array
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(img)[None], (16, 16, 16), net, overlap=0.25)
    probs = torch.softmax(logits[0], 0).numpy()
    image01 = (img[0] - img[0].min()) / np.ptp(img[0])
    pred = postprocess_probs(probs, image01[None], {"chain": steps})
    return case_metrics(pred, case._item["label"].array[0], 3, spacing=(2.0, 2.0, 3.0))


@pytest.mark.parametrize("steps", [["largest_component"], ["crf", "largest_component"]])
def test_chain_equals_running_it_by_hand(setup, steps):
    net, cases = setup
    got = evaluate_cases(net, cases, (16, 16, 16), 3, torch.device("cpu"), None, 0.25, 4,
                         postprocess={"chain": steps})
    for case, row in zip(cases, got):
        ref = _manual(net, case, steps)
        assert row["case_id"] == case.case_id
        assert set(ref) <= set(row)
        for k in ref:
            np.testing.assert_equal(row[k], ref[k])


def test_empty_chain_is_plain_argmax(setup):
    net, cases = setup
    plain = evaluate_cases(net, cases, (16, 16, 16), 3, torch.device("cpu"), None, 0.25, 4)
    empty = evaluate_cases(net, cases, (16, 16, 16), 3, torch.device("cpu"), None, 0.25, 4,
                           postprocess={"chain": []})
    assert repr(plain) == repr(empty)
    labels = predict_labels(net, cases[0]._item["image"].array, (16, 16, 16), torch.device("cpu"), None, 0.25)
    assert labels.dtype == np.uint8 and labels.shape == (20, 18, 16)
