"""docs/README.md of a bundle, written from its metadata (contract + provenance + metrics)."""
from __future__ import annotations

import math


def _fmt(v, nd=3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return str(int(v)) if nd == 0 and v.is_integer() else f"{v:.{nd}f}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out


def _secagg_text(sa) -> str:
    if isinstance(sa, dict):
        mode = sa.get("mode", "?")
        rest = ", ".join(f"{k} {v}" for k, v in sa.items() if k != "mode" and not isinstance(v, (dict, list)))
        return f"{mode}" + (f" ({rest})" if rest else "")
    return str(sa) if sa else "not recorded"


def _chain_text(c: dict) -> str:
    steps = (c.get("postprocess") or {}).get("chain") or []
    if not steps:
        return "none (argmax only)"
    out = []
    for st in steps:
        name = st if isinstance(st, str) else st.get("name")
        cls = None if isinstance(st, str) else st.get("classes")
        out.append(f"{name}" + (f" (classes {', '.join(map(str, cls))})" if cls else ""))
    return ", then ".join(out)


def readme(meta: dict) -> str:
    c = meta["data_contract"]
    p = meta.get("federated_provenance", {})
    netc = meta.get("fedvox", {}).get("network_config", {})
    labels = c["labels"]
    fg = [k for k in labels if k != "0"]
    L = [f"# {meta['task']}", "", meta["description"], "",
         f"> {meta['intended_use']}", "",
         f"Bundle version {meta['version']}; exported by fedvox from run `{p.get('run_id', '?')}` "
         f"({p.get('which', 'best')} global model"
         + (f", round {p['round']}" if p.get("round") is not None else "") + ").", ""]

    L += ["## Training (federated)", ""]
    L += _table(["item", "value"], [
        ["federation", p.get("federation", "?")],
        ["sites (pseudonymous)", ", ".join(p.get("sites", [])) or "?"],
        ["strategy", p.get("strategy", "?")],
        ["rounds", p.get("rounds", "?")],
        ["secure aggregation", _secagg_text(p.get("secure_aggregation"))],
        ["network", f"residual 3D U-Net, channels {netc.get('channels')}, strides {netc.get('strides')}, "
                    f"{netc.get('num_res_units')} residual unit(s)"],
    ])
    L += ["", "No image left any site: each trained locally and only (masked) weight updates were "
          "aggregated. Site names are replaced by pseudonyms; the mapping stays with the coordinator.", ""]

    m = p.get("metrics", {})
    held = m.get("held_out") or {}
    if held:
        L += ["## Evaluation on the coordinator's held-out cases", ""]
        rows = [[labels[k], held.get(f"dice_{k}"), _fmt(held.get(f"hd95_{k}"), 2),
                 _fmt(held.get(f"missed_{k}"), 0)] for k in fg]
        L += _table(["structure", "Dice", "HD95 (mm)", "missed cases"], rows)
        space = m.get("held_out_space", "preprocessed")
        L += ["", ("Measured in each case's ORIGINAL image space (the prediction put back on the input's "
                   "grid, compared with the original label at its spacing), which is what this bundle "
                   "outputs." if space == "original" else
                   "Measured on the preprocessed (resampled, cropped) grid of the run, not in the input's "
                   "original space.") + " Post-processing: " + _chain_text(c) + "."]
        L += ["", f"Mean foreground Dice: {_fmt(held.get('dice_fg_mean'))}. Metrics follow MONAI's "
              "semantics (Dice ignore_empty, symmetric HD95); a structure the model missed entirely "
              "is counted in 'missed' rather than silently dropped from HD95.", ""]
    sites = m.get("sites") or {}
    if sites:
        L += ["## Per site: federated (global) vs local-only model", "",
              "Each site evaluated both models on its own validation cases.", ""]
        rows = []
        for s, r in sites.items():
            g, lo = r.get("global/dice_fg_mean"), r.get("local/dice_fg_mean")
            gain = (g - lo) if isinstance(g, (int, float)) and isinstance(lo, (int, float)) else None
            rows.append([s, g, lo, "n/a" if gain is None else f"{gain:+.3f}"])
        L += _table(["site", "Dice (global)", "Dice (local-only)", "gain"], rows)
        L.append("")

    L += ["## Data contract (what the input must go through)", ""]
    rows = [["orientation", c["orientation"]], ["voxel spacing (mm)", " x ".join(_fmt(x, 2) for x in c["pixdim"])]]
    for mod, rule in c["intensity"].items():
        rows.append([f"intensity ({mod})", ", ".join(f"{k}={v}" for k, v in rule.items())])
    rows += [["default modality", c["modality"]],
             ["foreground crop", f"{c['crop_foreground']} (threshold {c['foreground_threshold']}, margin {c['margin']})"],
             ["sliding window", f"roi {c['roi_size']}, overlap {c['overlap']}, gaussian blending"],
             ["post-processing (preprocessed grid)", _chain_text(c)],
             ["labels", "; ".join(f"{k} = {v}" for k, v in labels.items())]]
    L += _table(["step", "setting"], rows)
    L.append("")

    mult = 1
    for s in netc.get("strides", []):
        mult *= int(s)
    L += ["## How to run it", "",
          "**Verify first.** MONAI's runner does not check this bundle's signature: run "
          "`fedvox bundle verify` (below) against the coordinator's pinned public key before "
          "`python -m monai.bundle run`, and run nothing from a copy that fails.", "",
          "With MONAI alone (no pytorch-ignite needed), from this directory:", "", "```bash",
          "mkdir -p input && cp /path/to/image.nii.gz input/",
          "python -m monai.bundle run --config_file configs/inference.json",
          "# -> eval/<image>_seg.nii.gz, a uint8 label map in the input's space and orientation",
          "# other modality: --modality MR      other folders: --dataset_dir DIR --output_dir DIR",
          "```", "",
          "With fedvox (NIfTI file or DICOM series in, label NIfTI out in the input's original grid):", "",
          "```bash", "fedvox bundle verify BUNDLE_DIR --kit SITE_KIT   # or --public-key bundle_signing.pub",
          "fedvox infer BUNDLE_DIR /path/to/image.nii.gz --out seg.nii.gz --kit SITE_KIT [--device cuda]",
          "fedvox infer BUNDLE_DIR /path/to/folder --out /path/to/out --kit SITE_KIT   # every file / series in it",
          "fedvox infer BUNDLE_DIR /path/to/dicom --series-uid UID --out seg.nii.gz --kit SITE_KIT",
          "```", "", "`fedvox infer` checks each input against this bundle first: a DICOM Modality "
          "(0008,0060) the bundle was not made for, a CT not in Hounsfield units, or a voxel spacing far "
          "from the bundle's is one clear error, unless `--force modality|intensity|spacing|all`.", "", "`fedvox infer` verifies the bundle itself and refuses an unsigned, re-signed or "
          "changed one (exit 2) unless given `--allow-unsigned`.", "",
          f"TorchScript (`models/model.ts`): input `(N, {c['in_channels']}, X, Y, Z)` float32 already "
          f"preprocessed as above, each spatial size a multiple of {mult}; output `(N, {len(labels)}, X, Y, Z)` "
          "logits (argmax over channels = labels).", ""]
    if any(str(r.get("mask")) == "head" for r in c["intensity"].values()):
        L += ["## Bundle code", "",
              "The head-masked z-score has no MONAI transform, so it ships as code: `scripts/head_zscore.py` "
              "(the exact file fedvox normalises with; numpy and scipy only) and "
              "`scripts/fedvox_transforms.py` (`HeadZScored`, a MONAI MapTransform around it), named in "
              "configs/inference.json as `scripts.fedvox_transforms.HeadZScored`. MONAI's runner puts the "
              "bundle directory on `sys.path`; the manifest signs these files like the others, and the run "
              "writes no `__pycache__` into the bundle (an added file fails verification).", ""]
    L += ["## Weights", "",
          "`models/model.pt` is a plain state dict for `monai.networks.nets.UNet` with the arguments of "
          "`network_def` in configs/inference.json. fedvox trains its own `UNet3D`, which has exactly the "
          "layout of MONAI's UNet (same convolutions, norms and activations in the same order) under "
          "different module names; the export renames every tensor to MONAI's key names (and checks "
          "that MONAI's UNet loads them strictly), so this bundle needs only MONAI to run. "
          "`fedvox` maps the names back when it loads the bundle.", ""]
    L += ["## Integrity", "",
          "`manifest.json` lists the SHA-256 of every file and is signed (ECDSA P-384 / SHA-384) with the "
          "coordinator's bundle-signing key (`manifest.json.sig`). The bundle carries no public key to "
          "trust: verify against the one in your site kit (`bundle_signing.pub`), which `manifest.json` "
          "names by its SHA-256 (`public_key_sha256`). `python -m monai.bundle run` checks none of this.", ""]
    L += ["## Versions", ""]
    L += _table(["package", "version"], [["MONAI", meta["monai_version"]], ["PyTorch", meta["pytorch_version"]],
                                         ["NumPy", meta["numpy_version"]],
                                         *[[k, v] for k, v in meta["required_packages_version"].items()]])
    L.append("")
    return "\n".join(L)
