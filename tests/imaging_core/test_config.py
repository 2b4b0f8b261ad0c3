"""The imaging schema: every bad input is one ConfigError naming the file, the
table and the key (with a "did you mean" for a near miss), and the schema is
the one place the defaults live."""
from __future__ import annotations

import subprocess
import sys

import pytest

from imaging_core.config import (ImagingConfig, PreprocessTable, SamplingTable, TrainTable, ConfigError,
                                 imaging_config)

FILE = "/sites/federation.toml"


def _err(doc: dict) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        imaging_config(doc, FILE)
    assert str(e.value).startswith(FILE + ": ")  # the file, always
    return e.value


@pytest.mark.parametrize("doc, table, key, words", [
    ({"preprocess": {"pixdimm": [4, 4, 4]}}, "preprocess", "pixdimm", "did you mean 'pixdim'?"),
    ({"train": {"patches_per_stp": 2}}, "train", "patches_per_stp", "did you mean 'patches_per_step'?"),
    ({"model": {"chanels": [4, 8]}}, "model", "chanels", "did you mean 'channels'?"),
    ({"train": {"epochs": "three"}}, "train", "epochs", "valid integer"),
    ({"train": {"amp": "bf61"}}, "train", "amp", "did you mean 'bf16'?"),
    ({"train": {"lr": -1.0}}, "train", "lr", "greater than 0"),
    ({"train": {"overlap": 1.0}}, "train", "overlap", "less than 1"),
    ({"train": {"patches_per_step": -1}}, "train", "patches_per_step", "greater than or equal to 0"),
    ({"sampling": {"patch_size": [96, 96]}}, "sampling", "patch_size", "at least 3"),
    ({"preprocess": {"pixdim": [1.0, 1.0, 1.0, 1.0]}}, "preprocess", "pixdim", "at most 3"),
    ({"preprocess": {"pixdim": [1.0, 0.0, 1.0]}}, "preprocess", "pixdim.1", "greater than 0"),
    ({"preprocess": {"orientation": "RAX"}}, "preprocess", "orientation", "axis codes"),
    ({"preprocess": {"intensity": {"CT": {"kind": "windw"}}}}, "preprocess", "intensity.CT",
     "did you mean 'window'?"),
    ({"preprocess": {"intensity": {"CT": {"a_mn": -200, "a_max": 300}}}}, "preprocess", "intensity.CT.a_mn",
     "did you mean 'a_min'?"),
    ({"augment": {"flip_prob": 1.5}}, "augment", "flip_prob", "less than or equal to 1"),
    ({"sampling": {"mode": "clases"}}, "sampling", "mode", "did you mean 'classes'?"),
    ({"postprocess": {"chian": []}}, "postprocess", "chian", "did you mean 'chain'?"),
    ({"labels": {"bg": "background"}}, "labels", None, "keys must be integers"),
    ({"labels": {"0": "background", "2": "organ"}}, "labels", None, "0..K-1"),
    ({"train": {"patches_per_step": 2, "grad_accum": 2}}, "train", None, "cannot be combined with grad_accum"),
    ({"model": {"channels": [4, 8, 16], "strides": [2]}}, "model", None, "one entry fewer"),
])
def test_bad_input_is_one_error_naming_table_and_key(doc, table, key, words):
    e = _err(doc)
    assert (e.table, e.key) == (table, key)
    assert words in str(e)
    assert f"[{table}]" in str(e) and (key is None or key in str(e))


def test_a_misspelt_table_is_refused_with_did_you_mean():
    e = _err({"postproces": {"chain": []}})
    assert e.table is None and "unknown table [postproces]" in str(e) and "'postprocess'" in str(e)


def test_a_bool_or_string_never_passes_for_a_number():
    assert _err({"augment": {"noise_prob": True}}).key == "noise_prob"
    assert _err({"sampling": {"samples_per_case": "4"}}).key == "samples_per_case"


def test_defaults_fill_what_the_file_leaves_out():
    cfg = imaging_config({"train": {"lr": 0.01}, "labels": {"0": "background", "1": "organ"}}, FILE)
    assert cfg.train.lr == 0.01 and cfg.train.loss == "dicece" and cfg.train.epochs == TrainTable().epochs
    assert cfg.labels == {0: "background", 1: "organ"} and cfg.num_classes == 2
    assert cfg.roi == tuple(SamplingTable().patch_size)
    # a file's own rule for CT replaces CT's default, MR keeps its default
    cfg = imaging_config({"preprocess": {"intensity": {"CT": {"kind": "percentile"}}}}, FILE)
    assert cfg.preprocess.intensity["CT"].kind == "percentile" and cfg.preprocess.intensity["MR"].kind == "zscore"


def test_objects_are_read_only_and_updated_revalidates():
    cfg = ImagingConfig()
    with pytest.raises(Exception):
        cfg.train.lr = 1.0
    new = cfg.updated({"train": {"lr": 0.5}})
    assert new.train.lr == 0.5 and cfg.train.lr == TrainTable().lr and new.model == cfg.model
    with pytest.raises(ConfigError, match=r"\[train\] lr"):
        cfg.updated({"train": {"lr": 0}})


def test_presets_and_contract_take_their_defaults_from_the_schema():
    """One place for each default: the pipeline and a bundle contract left to
    their defaults say what the schema says (margin was 0 in two places, 2 in one)."""
    from imaging_core.bundle.contract import normalize_contract
    from imaging_core.transforms.crop_pad import CropForeground
    from imaging_core.transforms.presets import build_preprocess, build_sampler
    pre = PreprocessTable()
    crop = build_preprocess(pre, "CT").transforms[-1]
    assert isinstance(crop, CropForeground) and crop.margin == (pre.margin,) * 3 == (2, 2, 2)
    assert crop.threshold == pre.foreground_threshold
    assert build_sampler(SamplingTable(), 3).num_samples == SamplingTable().samples_per_case
    c = normalize_contract({"pixdim": [2.0, 2.0, 2.0], "labels": {"0": "bg", "1": "fg"},
                            "intensity": {"CT": {"kind": "window", "a_min": -100, "a_max": 200}}})
    train = TrainTable()
    assert (c["margin"], c["orientation"], c["crop_foreground"], c["foreground_threshold"]) == \
        (pre.margin, pre.orientation, pre.crop_foreground, pre.foreground_threshold)
    assert (c["overlap"], c["sw_batch_size"], c["roi_size"]) == \
        (train.overlap, train.sw_batch_size, SamplingTable().patch_size)
    assert c["intensity"] == {"CT": {"kind": "window", "a_min": -100.0, "a_max": 200.0, "b_min": 0.0,
                                     "b_max": 1.0, "clip": True}}  # only the contract's modality


def test_the_schema_imports_no_torch():
    code = "import sys, imaging_core.config; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ----- [preprocess] = "auto" (issue 16): the run's plan decides ---------------------
def test_preprocess_absent_or_auto_is_the_auto_marker_and_a_table_overrides():
    assert imaging_config({}, FILE).preprocess_auto
    assert imaging_config({"preprocess": "auto"}, FILE).preprocess_auto
    cfg = imaging_config({"preprocess": {"pixdim": [4.0, 4.0, 4.0]}}, FILE)
    assert not cfg.preprocess_auto and cfg.preprocess_table().pixdim == [4.0, 4.0, 4.0]


def test_a_bad_preprocess_string_is_one_error_naming_the_file():
    e = _err({"preprocess": "autom"})
    assert e.table == "preprocess" and str(e).startswith(FILE) and '"auto"' in str(e)


def test_auto_without_a_plan_refuses_concrete_work_and_a_plan_resolves_it():
    cfg = imaging_config({"preprocess": "auto"}, FILE)
    with pytest.raises(ConfigError, match=r"\[preprocess\].*fedvox plan"):
        cfg.preprocess_table("`fedvox train`")
    planned = cfg.with_preprocess(PreprocessTable(pixdim=[2.0, 2.0, 3.0]).model_dump())
    assert planned.preprocess_table().pixdim == [2.0, 2.0, 3.0] and cfg.preprocess_auto
    with pytest.raises(ConfigError, match=r"\[preprocess\] pixdim"):
        cfg.with_preprocess({"pixdim": [0.0, 1.0, 1.0]})
