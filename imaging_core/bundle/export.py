"""Export a trained UNet3D as a signed MONAI-style bundle.

    configs/metadata.json   MONAI bundle metadata (schema 20240725) + data contract + provenance
    configs/inference.json  runs with `python -m monai.bundle run` (MONAI only, no ignite)
    models/model.pt         state dict under monai.networks.nets.UNet key names
    models/model.ts         TorchScript of the same network
    docs/README.md          what it is, how it was trained, metrics, how to run it
    scripts/*.py            only when needed: preprocessing MONAI has no transform for (scripts.py)
    LICENSE
    manifest.json (+ .sig, signer.pub.pem)   SHA-256 of every file, signed (ECDSA P-384 in fedvox)

The bundle is assembled in a temporary directory beside ``out_dir`` and
renamed into place, so a failed export never leaves half a bundle.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import secrets
from pathlib import Path

import numpy as np
import torch

from . import configs, docs, scripts
from .contract import normalize_contract, num_classes
from ..io.atomic import replace_dir
from .manifest import write_manifest

DEFAULT_LICENSE = """\
Model weights and configuration exported by fedvox.

Licensed under the Apache License, Version 2.0 (the "License"); you may not use
these files except in compliance with the License. You may obtain a copy of the
License at http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed
under the License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR
CONDITIONS OF ANY KIND, either express or implied.

The model was trained on data of the federation's member sites; it is provided
for research use only and is not a medical device.
"""


def build_bundle_net(state_dict: dict, model_cfg: dict, contract: dict) -> torch.nn.Module:
    """Our UNet3D for this contract with ``state_dict`` loaded (ours or MONAI's key names)."""
    from ..nets.unet3d import load_monai_state_dict, monai_key_map, unet_from_config
    # the same construction as imaging_core.task.build_net (minus the seeded init)
    cfg = {k: v for k, v in model_cfg.items() if k != "name"}
    cfg.update(in_channels=int(contract["in_channels"]), out_channels=num_classes(contract))
    net = unet_from_config(cfg)
    sd = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, torch.Tensor) else v
          for k, v in state_dict.items()}
    ours = net.state_dict()
    if set(sd) <= set(ours):
        missing = [k for k, v in ours.items() if v.is_floating_point() and k not in sd]
        if missing:
            raise ValueError(f"state dict lacks {len(missing)} weights of the model, e.g. {missing[:3]}")
        for k, v in sd.items():
            if tuple(v.shape) != tuple(ours[k].shape):
                raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit the model's {tuple(ours[k].shape)}")
        net.load_state_dict({k: v.to(ours[k].dtype) for k, v in sd.items()}, strict=False)
    elif set(sd) == set(monai_key_map(net).values()):
        load_monai_state_dict(net, sd)
    else:
        raise ValueError("state dict keys fit neither this UNet3D nor the equivalent MONAI UNet")
    return net.eval()


def _torchscript(net: torch.nn.Module, contract: dict) -> tuple[torch.jit.ScriptModule, str]:
    """Scripted when possible (shape-generic), traced otherwise."""
    try:
        return torch.jit.script(net), "script"
    except Exception:  # a scripting gap should not block the export; tracing is exact for a conv net
        x = torch.zeros(1, int(contract["in_channels"]), *contract["roi_size"])
        with torch.no_grad():
            return torch.jit.trace(net, x), "trace"


def _check_monai_fit(monai_kwargs: dict, monai_sd: dict) -> None:
    """When MONAI is installed, prove the bundle's network_def accepts model.pt exactly."""
    try:
        from monai.networks.nets import UNet
    except ImportError:
        return
    UNet(**monai_kwargs).load_state_dict(monai_sd, strict=True)


def export_bundle(state_dict: dict, model_cfg: dict, data_contract: dict, provenance: dict,
                  out_dir: str | os.PathLike, signing_key_path: str | os.PathLike | None = None,
                  version: str = "1.0.0", license_text: str | None = None, overwrite: bool = False,
                  signature_scheme=None) -> Path:
    """Write the bundle to ``out_dir`` and return it.

    ``state_dict``: float tensors (or arrays) of the UNet3D built from ``model_cfg``
    (the federation's [model] table) with ``in_channels``/number of labels from the contract.
    ``signing_key_path``: a private key that ``signature_scheme`` loads (fedvox:
    fl_common.crypto.signing.MANIFEST_SIGNATURES, EC P-384 PEM or OpenSSH);
    without it the manifest is written unsigned.
    """
    from ..nets.unet3d import to_monai_state_dict
    contract = normalize_contract(data_contract)
    if signing_key_path and signature_scheme is None:
        raise ValueError("signing a bundle needs a signature scheme (fl_common.crypto.signing.MANIFEST_SIGNATURES)")
    key = signature_scheme.load_private(signing_key_path) if signing_key_path else None  # fail before any work
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass overwrite=True to replace it)")
    net = build_bundle_net(state_dict, model_cfg, contract)
    monai_kwargs = net.monai_config()
    monai_sd = {k: v.detach().cpu().contiguous() for k, v in to_monai_state_dict(net).items()}
    _check_monai_fit(monai_kwargs, monai_sd)
    ts, ts_method = _torchscript(net, contract)
    provenance = json.loads(json.dumps(provenance, default=str))  # JSON-clean copy
    meta = _nan_to_none(configs.metadata(contract, provenance, net.config(), version, ts_method))
    infer_cfg = configs.inference_config(contract, monai_kwargs)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for d in ("configs", "models", "docs"):
            (tmp / d).mkdir()
        _write_json(tmp / "configs" / "metadata.json", meta)
        _write_json(tmp / "configs" / "inference.json", infer_cfg)
        buf = io.BytesIO()
        torch.save(monai_sd, buf)
        (tmp / "models" / "model.pt").write_bytes(buf.getvalue())
        extra = {"metadata.json": json.dumps(meta), "data_contract.json": json.dumps(contract)}
        torch.jit.save(ts, str(tmp / "models" / "model.ts"), _extra_files=extra)
        (tmp / "docs" / "README.md").write_text(docs.readme(meta))
        (tmp / "LICENSE").write_text(license_text or DEFAULT_LICENSE)
        if scripts.needs_scripts(contract):  # before the manifest: it hashes and signs them
            scripts.write_scripts(tmp)
        write_manifest(tmp, key, signature_scheme)
        replace_dir(tmp, out)  # old dir moved aside, deleted once the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, obj) -> None:
    # NaN is not JSON: MONAI's parser and schema validators reject it, so it becomes null
    path.write_text(json.dumps(_nan_to_none(obj), indent=2) + "\n")


def _nan_to_none(o):
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o
