"""Federation and site TOML files -> plain dicts with defaults filled in.

Every knob has a default that works on a laptop CPU; the TOML only says what
differs. Both the server and the site read these, so they live here once.
"""
from __future__ import annotations

import copy
import os
import tomllib
from pathlib import Path

from imaging_core.errors import ImagingError

DEFAULTS = {
    "federation": {"name": "federation", "seed": 0, "rounds": 3, "strategy": "fedavg", "min_sites": 2,
                   "local_epochs": 1, "prox_mu": 0.01, "local_baseline": True, "keep_site_optimizer": False,
                   "best_metric": "dice_fg_mean", "train_timeout": 900.0, "eval_timeout": 600.0},
    "model": {"name": "unet3d", "channels": [8, 16, 32, 64], "strides": [2, 2, 2], "num_res_units": 1,
              "dropout": 0.0},
    "train": {"loss": "dicece", "lr": 1e-3, "epochs": 10, "amp": "auto", "optimizer": "adamw",
              "overlap": 0.5, "sw_batch_size": 4, "val_every": 1},
    "labels": {"0": "background", "1": "foreground"},
    "preprocess": {"orientation": "RAS", "pixdim": [1.5, 1.5, 2.0], "crop_foreground": True,
                   "foreground_threshold": 0.05, "margin": 2,
                   "intensity": {"CT": {"kind": "window", "a_min": -200.0, "a_max": 300.0},
                                 "MR": {"kind": "zscore"}}},
    "sampling": {"patch_size": [96, 96, 96], "samples_per_case": 4, "mode": "classes",
                 "class_ratios": None, "pos": 1.0, "neg": 1.0},
    # post-processing before every evaluation (central, sites, baselines): a chain
    # as in imaging_core.postprocess.chain, e.g. {"chain": ["crf", "largest_component"]}
    "postprocess": {"chain": []},
    "augment": {"flip_prob": 0.5, "rot90_prob": 0.25, "affine_prob": 0.2,
                "intensity_prob": 0.3, "noise_prob": 0.15},
}
SITE_DEFAULTS = {"datalist": "dataset.json", "modality": "CT", "device": "cpu", "num_workers": 0}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_toml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ImagingError(path, "config file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ImagingError(path, f"invalid TOML ({e})") from None


def load_site(path: str | os.PathLike, data_base: str | os.PathLike | None = None) -> dict:
    """A site config; ``data_root`` is resolved against ``data_base`` if relative."""
    path = Path(path)
    doc = read_toml(path)
    if "site" not in doc or "name" not in doc["site"]:
        raise ImagingError(path, "missing [site] table with a 'name'")
    site = {**SITE_DEFAULTS, **doc["site"], "config_path": str(path)}
    root = Path(site.get("data_root", site["name"]))
    if not root.is_absolute():
        root = Path(data_base if data_base is not None else path.parent) / root
    site["data_root"] = str(root)
    site["datalist_path"] = str(root / site["datalist"])
    if site["modality"] not in ("CT", "MR"):
        raise ImagingError(path, f"modality must be CT or MR, got {site['modality']!r}")
    return site


def load_federation(path: str | os.PathLike, data_base: str | os.PathLike | None = None,
                    require_sites: bool = True) -> dict:
    """The federation TOML with defaults, plus its sites' configs under 'sites'/'coordinator'.

    A site only needs the shared data contract and model (require_sites=False):
    its startup kit's copy need not list the other sites."""
    path = Path(path)
    fed = _merge(DEFAULTS, read_toml(path))
    try:
        fed["labels"] = {int(k): str(v) for k, v in fed["labels"].items()}
    except ValueError:
        raise ImagingError(path, "[labels] keys must be integers") from None
    _check_train(path, fed["train"])
    fed["sites"] = [load_site(path.parent / s["config"], data_base) for s in fed.get("sites", [])]
    if not fed["sites"] and require_sites:
        raise ImagingError(path, "no [[sites]] listed")
    if "coordinator" in fed:
        fed["coordinator"] = load_site(path.parent / fed["coordinator"]["config"], data_base)
    fed["path"] = str(path)
    return fed


def _check_train(path: Path, train: dict) -> None:
    """A misspelt or bad [train] key fails here, naming the file, not rounds
    later at every site."""
    from imaging_core.train.task import train_config
    try:
        train_config(train)
    except (TypeError, ValueError) as e:
        raise ImagingError(path, str(e)) from None


def example_federation_path() -> Path:
    import sites_example
    return Path(sites_example.__file__).parent / "federation.toml"
