"""configs/metadata.json and configs/inference.json of an exported bundle.

inference.json is written for MONAI's own runner (``python -m monai.bundle
run``) and deliberately avoids ``monai.engines`` / ``monai.handlers``: those
need pytorch-ignite, which a hospital's MONAI install often lacks. The
"workflow" is a plain list of expressions: load the weights, then
``evaluator.run()`` -- a namespace, not an ignite engine -- which for each input
file runs preprocess -> sliding window -> argmax -> the run's post-processing
chain (MONAI transforms, on the preprocessed grid as in the run's evaluation)
-> invert the preprocessing (nearest neighbour) -> save. A preprocessing step
MONAI has no transform for ships as bundle code under scripts/ (scripts.py). The network is ``monai.networks.nets.UNet``: our
UNet3D has the same layout, and models/model.pt holds its weights under
MONAI's key names, so the bundle runs with MONAI alone.
"""
from __future__ import annotations

import importlib.metadata as im

import numpy as np

SCHEMA_URL = ("https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
              "0.8.1/meta_schema_20240725.json")
# the MONAI version the bundle format and inference.json were validated against
TESTED_MONAI = "1.6.1"


def _version(pkg: str, fallback: str) -> str:
    try:
        return im.version(pkg)
    except im.PackageNotFoundError:
        return fallback


def crop_threshold(contract: dict, modality: str) -> float | None:
    """The foreground threshold fedvox's preprocessing uses for this modality (None: no crop)."""
    from .contract import contract_preprocess
    pre = contract_preprocess(contract)
    return pre.crop_threshold(modality) if pre.crop_foreground else None


def _monai_intensity(rule: dict) -> dict:
    """MONAI's transform for a normalised contract's rule (every option filled in)."""
    kind = rule["kind"]
    if kind == "window":
        return {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": float(rule["a_min"]),
                "a_max": float(rule["a_max"]), "b_min": float(rule["b_min"]),
                "b_max": float(rule["b_max"]), "clip": bool(rule["clip"])}
    if kind == "zscore":
        if rule["mask"] == "head":  # no MONAI transform: the bundle ships fedvox's code (scripts.py)
            from .scripts import HEAD_ZSCORE_TARGET
            return {"_target_": HEAD_ZSCORE_TARGET, "keys": "image", "outside": float(rule["outside"])}
        # fedvox's z-score is channel-wise by default; with one input channel it is the same thing
        return {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": rule["mask"] == "nonzero",
                "channel_wise": True}
    return {"_target_": "ScaleIntensityRangePercentilesd", "keys": "image", "lower": float(rule["lower"]),
            "upper": float(rule["upper"]), "b_min": float(rule["b_min"]),
            "b_max": float(rule["b_max"]), "clip": bool(rule["clip"]),
            "relative": bool(rule["relative"])}


# fedvox connectivity (neighbours) -> MONAI's (orthogonal hops), as scikit-image counts them
_HOPS = {6: 1, 18: 2, 26: 3}


class UnexportableStep(ValueError):
    """A post-processing step MONAI's transforms cannot express."""


def monai_postprocess(contract: dict) -> list[dict]:
    """The contract's label steps as MONAI transforms on the "pred" label map.

    "largest_component" is MONAI's KeepLargestConnectedComponentd per class
    (independent, on the label map, same connectivity). Refused, with the reason:
    "crf" (MONAI's CRF is a network block that needs the compiled extension its
    wheel lacks, and no transform runs it) and "remove_small" (MONAI's
    RemoveSmallObjectsd treats each label value of a label map as one object, not
    each connected component of a class, so it would remove other voxels)."""
    from ..postprocess.chain import build_postprocess
    steps = build_postprocess(contract.get("postprocess") or {}).steps
    fg = [int(k) for k in contract["labels"] if int(k) != 0]
    out = []
    for name, opts in steps:
        if name in ("largest_component", "keep_largest"):
            conn = opts.get("connectivity")
            out.append({"_target_": "KeepLargestConnectedComponentd", "keys": "pred",
                        "applied_labels": [int(c) for c in (opts.get("classes") or fg)], "is_onehot": False,
                        "independent": True, "connectivity": None if conn is None else _HOPS[int(conn)]})
        else:
            why = ("MONAI's CRF needs a compiled extension its wheel does not ship, and no transform runs it"
                   if name == "crf" else
                   "MONAI's RemoveSmallObjectsd counts each label value as one object, not each component")
            raise UnexportableStep(f"post-processing step {name!r} cannot be expressed with MONAI transforms "
                                   f"({why}); export with a chain of 'largest_component' steps only")
    return out


def inference_config(contract: dict, monai_net_kwargs: dict) -> dict:
    mods = sorted(contract["intensity"])
    pre = [{"_target_": "LoadImaged", "keys": "image", "image_only": True},
           {"_target_": "EnsureChannelFirstd", "keys": "image"},
           {"_target_": "Orientationd", "keys": "image", "axcodes": contract["orientation"]},
           {"_target_": "Spacingd", "keys": "image", "pixdim": contract["pixdim"], "mode": "bilinear",
            "dtype": "$numpy.float32"},
           "@intensity"]
    cfg: dict = {
        "imports": ["$import glob", "$import os", "$import sys", "$import numpy", "$import torch"],
        # run from the bundle directory, or pass --bundle_root DIR
        "bundle_root": ".",
        "model_path": "$@bundle_root + '/models/model.pt'",
        "dataset_dir": "$@bundle_root + '/input'",
        "input_files": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii*')))",
        "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "monai.networks.nets.UNet", **monai_net_kwargs},
        "network": "$@network_def.to(@device)",
        "modality": contract["modality"],
    }
    # one intensity rule (and crop threshold) per modality the federation saw; pick with --modality MR
    for m in mods:
        cfg[f"intensity_{m}"] = _monai_intensity(contract["intensity"][m])
    cfg["intensity"] = "${" + ", ".join(f"'{m}': @intensity_{m}" for m in mods) + "}[@modality]"
    if contract["crop_foreground"]:
        thr = {m: crop_threshold(contract, m) for m in mods}
        cfg["crop_threshold"] = "${" + ", ".join(f"'{m}': {thr[m]!r}" for m in mods) + "}[@modality]"
        pre.append({"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                    "select_fn": "$lambda x: x > @crop_threshold", "margin": int(contract["margin"]),
                    "allow_smaller": False})
    pre.append({"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"})
    cfg.update({
        "preprocessing": {"_target_": "Compose", "transforms": pre},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @input_files]",
                    "transform": "@preprocessing"},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": contract["roi_size"],
                    "sw_batch_size": int(contract["sw_batch_size"]), "overlap": float(contract["overlap"]),
                    "mode": "gaussian"},
        # argmax first, then invert: labels go back to the input's grid by nearest neighbour
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            *monai_postprocess(contract),
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": True, "to_tensor": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False}]},
        # no_grad as a decorator: an expression cannot hold a `with` block
        "predict": "$lambda d: @postprocessing({**d, 'pred': torch.no_grad()(@inferer)("
                   "d['image'][None].to(@device), @network)[0].cpu()})",
        # MONAI's InferProperties expect an "evaluator" with .run(); an ignite engine would
        # need pytorch-ignite, so this is a namespace whose run() loops over the dataset
        "evaluator": {"_target_": "types.SimpleNamespace",
                      "run": "$lambda: [@predict(d) for d in @dataset]"},
        # first, before scripts/ is imported: a __pycache__ written into the bundle would be
        # an unlisted file, and `fedvox bundle verify` refuses added files (a .pyc runs as code)
        "run": ["$setattr(sys, 'dont_write_bytecode', True)",
                "$@network.load_state_dict(torch.load(@model_path, map_location=@device, weights_only=True))",
                "$@network.eval()",
                "$@evaluator.run()"],
    })
    return cfg


def metadata(contract: dict, provenance: dict, net_config: dict, version: str, ts_method: str) -> dict:
    import torch
    labels = contract["labels"]
    k = len(labels)
    mod = contract["modality"]
    rule = contract["intensity"][mod]
    fg = ", ".join(v for kk, v in labels.items() if kk != "0")
    fed = provenance.get("federation", "a fedvox federation")
    eval_metrics = {}
    for key, val in (provenance.get("metrics", {}).get("held_out") or {}).items():
        if isinstance(val, (int, float)) and np.isfinite(val):
            eval_metrics[f"held_out_{key}"] = float(val)
    if eval_metrics:  # which space the figures were measured in ("original": the input's grid)
        eval_metrics["held_out_space"] = str(provenance.get("metrics", {}).get("held_out_space", "preprocessed"))
    io_common = {"type": "image", "spatial_shape": list(contract["roi_size"]), "dtype": "float32",
                 "is_patch_data": True}
    return {
        "schema": SCHEMA_URL,
        "version": version,
        "changelog": {version: f"federated model from run {provenance.get('run_id', '?')} "
                               f"({provenance.get('which', 'best')} global model)"},
        "monai_version": _version("monai", TESTED_MONAI),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": _required_packages(contract),
        "task": f"Federated 3D segmentation of {fg} ({mod})",
        "description": (f"A 3D residual U-Net trained by federated learning across "
                        f"{len(provenance.get('sites', []))} sites of {fed} "
                        f"({provenance.get('strategy', '?')}, {provenance.get('rounds', '?')} rounds). "
                        "Input: one 3D image; output: one label map in the input's original space."),
        "authors": str(provenance.get("authors", f"The {fed} federation (fedvox)")),
        "copyright": str(provenance.get("copyright", f"Copyright (c) the members of {fed}")),
        "data_source": "Private data of the participating sites; it never left them.",
        "data_type": "nibabel",
        "image_classes": f"single channel {mod} image, {_rule_text(rule)}",
        "label_classes": "; ".join(f"{kk}: {v}" for kk, v in labels.items()),
        "pred_classes": "; ".join(f"{kk}: {v}" for kk, v in labels.items()),
        "eval_metrics": eval_metrics,
        "intended_use": "Research only. Not a medical device; not for clinical decisions.",
        "network_data_format": {
            "inputs": {"image": {**io_common, "format": "hounsfield" if mod == "CT" else "magnitude",
                                 "modality": mod, "num_channels": int(contract["in_channels"]),
                                 "value_range": [float(v) for v in _value_range(rule)],
                                 "channel_def": {"0": "image"}}},
            "outputs": {"pred": {**io_common, "format": "segmentation", "num_channels": k,
                                 "value_range": [], "channel_def": dict(labels)}},
        },
        "data_contract": contract,
        "federated_provenance": provenance,
        "fedvox": {"network": "imaging_core.nets.UNet3D", "network_config": net_config,
                   "torchscript": ts_method,
                   "weights": "models/model.pt: state dict under monai.networks.nets.UNet key names"},
    }


def _required_packages(contract: dict) -> dict:
    req = {"nibabel": _version("nibabel", "5.1")}
    from .scripts import needs_scripts
    if needs_scripts(contract):  # the head mask of scripts/head_zscore.py
        req["scipy"] = _version("scipy", "1.11")
    if monai_postprocess(contract):  # MONAI's connected components come from scikit-image
        req["scikit-image"] = _version("scikit-image", "0.22")
    return req


def _value_range(rule):
    from .contract import input_value_range
    return input_value_range(rule)


def _rule_text(rule: dict) -> str:
    kind = rule["kind"]
    if kind == "window":
        return (f"window [{rule['a_min']}, {rule['a_max']}] -> [{rule['b_min']}, "
                f"{rule['b_max']}]")
    if kind == "zscore":
        return "z-score normalised" + {"nonzero": " over non-zero voxels", "all": "",
                                       "head": " inside the head"}[rule["mask"]]
    return f"percentiles {rule['lower']}-{rule['upper']} -> [{rule['b_min']}, {rule['b_max']}]"
