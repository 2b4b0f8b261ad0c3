"""Load an exported bundle back as fedvox's own UNet3D plus its data contract."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import ImagingError
from ..io.tables import read_json
from .contract import normalize_contract


def _net_config(root: Path, meta: dict) -> dict:
    cfg = (meta.get("fedvox") or {}).get("network_config")
    if cfg:
        return dict(cfg)
    # a bundle written elsewhere: rebuild from MONAI's network_def arguments
    nd = read_json(root / "configs" / "inference.json").get("network_def", {})
    if not str(nd.get("_target_", "")).endswith("UNet"):
        raise ImagingError(root, "bundle network is not a MONAI UNet; fedvox cannot load it")
    keys = ("in_channels", "out_channels", "channels", "strides", "kernel_size", "up_kernel_size",
            "num_res_units", "dropout", "bias")
    cfg = {k: nd[k] for k in keys if k in nd}
    cfg["norm"] = str(nd.get("norm") or "none").lower()
    cfg["act"] = str(nd.get("act", "PRELU")).lower()
    return cfg


def load_bundle(bundle_dir: str | os.PathLike, verify: bool = True, public_key=None,
                device: str | torch.device = "cpu", scheme=None,
                allow_unsigned: bool = False) -> tuple[torch.nn.Module, dict]:
    """``(net, contract)``: UNet3D in eval mode with the bundle's weights, and the data contract.

    With ``verify`` (default) a bundle that does not check out against the pinned
    ``public_key`` (with ``scheme``) is refused; see verify.verify_bundle for
    ``allow_unsigned``. ``verify=False`` is for the exporter's own tests only.
    """
    from ..nets.unet3d import load_monai_state_dict, unet_from_config
    root = Path(bundle_dir)
    if not root.is_dir():
        raise ImagingError(root, "bundle directory not found")
    if verify:
        from .verify import verify_bundle
        problems = verify_bundle(root, public_key, scheme=scheme, allow_unsigned=allow_unsigned)
        if problems:
            raise ImagingError(root, "bundle refused: " + "; ".join(problems))
    meta = read_json(root / "configs" / "metadata.json")
    if "data_contract" not in meta:
        raise ImagingError(root / "configs" / "metadata.json", "no data_contract (not a fedvox bundle)")
    try:
        contract = normalize_contract(meta["data_contract"])
    except ValueError as e:
        raise ImagingError(root / "configs" / "metadata.json", f"bad data_contract ({e})") from None
    net = unet_from_config(_net_config(root, meta))
    wpath = root / "models" / "model.pt"
    if not wpath.is_file():
        raise ImagingError(wpath, "missing from the bundle")
    sd = torch.load(wpath, map_location="cpu", weights_only=True)  # tensors only, never pickled code
    try:
        load_monai_state_dict(net, sd)
    except (KeyError, RuntimeError) as e:
        raise ImagingError(wpath, f"weights do not fit the bundle's network ({e})") from None
    return net.to(device).eval(), contract
