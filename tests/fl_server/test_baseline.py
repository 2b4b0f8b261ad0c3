"""`fedvox train`'s baselines on a tiny copy of sites_example: the final table
covers every site's validation cases and the held-out cases, and evaluating
the saved checkpoint again gives the same rows."""
from __future__ import annotations

import json
import shutil

import pytest

from fl_common.config import example_federation_path, load_federation


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sites_example.generate import generate
    base = tmp_path_factory.mktemp("baseline")
    generate(base / "data", zoom=0.7, cases=0.5, seed=0)
    src = example_federation_path()
    shutil.copytree(src.parent / "sites", base / "fed" / "sites")
    text = src.read_text()
    for old, new in [("channels = [8, 16, 32, 64]", "channels = [4, 8, 16]"),
                     ("strides = [2, 2, 2]", "strides = [2, 2]"),
                     ("patch_size = [32, 32, 32]", "patch_size = [24, 24, 24]"),
                     ("samples_per_case = 4", "samples_per_case = 2")]:
        assert old in text, old  # the example changed: update this test's edits
        text = text.replace(old, new)
    (base / "fed" / "federation.toml").write_text(text)
    return base / "fed" / "federation.toml", base / "data", base


def test_pooled_baseline_table_covers_every_set_and_reproduces(tiny):
    from fl_server.baseline import evaluate_on_sets, load_site_data, run_baseline
    from imaging_core.train.checkpoint import load_checkpoint
    from imaging_core.task import build_net
    fed_path, data_base, base = tiny
    out = base / "pooled"
    res = run_baseline(fed_path, "pooled", out, data_base=data_base, epochs=1, show_progress=False)
    fed = load_federation(fed_path, data_base=data_base)
    names = [s.name for s in fed.sites]
    final = json.loads((out / "final.json").read_text())
    assert [r["eval_set"] for r in final["rows"]] == names + ["held-out"]
    assert json.dumps(final["rows"]) == json.dumps(res["rows"])  # NaN-safe equality
    for r in final["rows"]:
        assert r["model"] == "pooled" and r["cases"] > 0 and 0.0 <= r["dice_1"] <= 1.0
    assert (out / "final.csv").read_text().count("\n") == len(names) + 2  # header + rows

    net = build_net(fed.model, fed.num_classes, seed=0)
    net.load_state_dict(load_checkpoint(out / final["checkpoint"])["net"])
    cache = out / "cache"
    again = evaluate_on_sets(fed, net, load_site_data(fed, cache), cache, model="pooled")
    assert json.dumps(again, sort_keys=True) == json.dumps(final["rows"], sort_keys=True)


def test_unknown_site_is_one_clear_error(tiny):
    from fl_server.baseline import run_baseline
    fed_path, data_base, base = tiny
    with pytest.raises(ValueError, match="unknown site 'nowhere'.*pooled"):
        run_baseline(fed_path, "nowhere", base / "x", data_base=data_base, epochs=1, show_progress=False)


def test_postprocess_chain_reaches_every_evaluation_and_a_bad_one_fails_early(tiny):
    from fl_server.baseline import evaluate_on_sets, load_site_data
    from fl_server.central_eval import CentralEvaluator
    from imaging_core.task import build_net
    fed_path, data_base, base = tiny
    fed = load_federation(fed_path, data_base=data_base)
    assert fed.postprocess.chain_config() == {"chain": []}  # the example's default: off
    net = build_net(fed.model, fed.num_classes, seed=0)
    cache = base / "pp-cache"
    data = load_site_data(fed, cache)
    plain = evaluate_on_sets(fed, net, data, cache)
    kept = evaluate_on_sets(fed.updated({"postprocess": {"chain": ["largest_component"]}}), net, data, cache)
    # an untrained net predicts scattered blobs: keeping the largest changes the figures
    assert json.dumps(plain) != json.dumps(kept)
    with pytest.raises(ValueError, match="unknown"):
        CentralEvaluator(fed.updated({"postprocess": {"chain": ["no_such_step"]}}), fed.coordinator, base / "cc")
