"""nnU-Net's rule: keep a class's largest component only where it raises its mean
validation Dice; the candidates come from the one evaluation path."""
from __future__ import annotations

import math

import numpy as np
import torch

from imaging_core.inference.choose_postprocess import candidate_scores, decide_largest_component


def test_decision_per_class_weighted_by_validation_cases():
    rows = [(4.0, {"raw_dice_1": 0.70, "lcc_dice_1": 0.80, "raw_dice_2": 0.50, "lcc_dice_2": 0.45}),
            (1.0, {"raw_dice_1": 0.90, "lcc_dice_1": 0.85, "raw_dice_2": 0.40, "lcc_dice_2": 0.60}),
            (0.0, {"raw_dice_1": 0.0, "lcc_dice_1": 1.0})]  # a site without validation cases has no say
    d = decide_largest_component(rows, 4)
    assert d["classes"] == [1] and d["chain"] == [{"name": "largest_component", "classes": [1]}]
    assert math.isclose(d["per_class"]["1"]["raw"], (4 * 0.70 + 0.90) / 5)
    assert math.isclose(d["per_class"]["2"]["lcc"], (4 * 0.45 + 0.60) / 5) and not d["per_class"]["2"]["keep"]
    assert "3" not in d["per_class"]  # nobody measured class 3: left alone
    # ties and NaN do not switch the step on
    assert decide_largest_component([(1.0, {"raw_dice_1": 0.5, "lcc_dice_1": 0.5})], 2)["chain"] == []
    assert decide_largest_component([(1.0, {"raw_dice_1": math.nan, "lcc_dice_1": 0.9})], 2)["per_class"] == {}


def test_candidates_measured_by_evaluate_cases(two_cases):
    """Every row carries both candidates; with no chain the raw one is the scored Dice."""
    from imaging_core.inference.evaluate import evaluate_cases
    from imaging_core.nets import UNet3D
    torch.manual_seed(0)
    net = UNet3D(in_channels=1, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1).eval()

    rows = evaluate_cases(net, two_cases, (16, 16, 16), 3, torch.device("cpu"), None, 0.25, 2)
    scores = candidate_scores(rows, 3)
    for c in (1, 2):
        raw = [r["candidates"]["raw"][str(c)] for r in rows]
        assert math.isclose(scores[f"raw_dice_{c}"], float(np.nanmean(raw)))
        assert [r["dice"][str(c)] for r in rows] == raw  # no chain: the scored prediction is the raw one
