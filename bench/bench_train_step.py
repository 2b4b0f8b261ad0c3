"""One training step of the default 3D U-Net vs MONAI, in one run.

Batch 2 x 1 x 96^3, 3 classes, DiceCE (one-hot targets, softmax) + Adam.
MONAI ``UNet`` + ``DiceCELoss`` vs fedvox ``UNet3D`` + ``DiceCELoss``, each in
fp32 and bf16 autocast, all four starting from the *same* weights (MONAI's
initialisation copied into ours via ``load_monai_state_dict``) and stepping on
the same batches. Steps are interleaved across the four variants so load from
other processes on the machine spreads evenly; the figure is the median.

    python bench/bench_train_step.py [--steps 7] [--warmup 2] [--size 96]

The first ``--check-steps`` losses of ours and MONAI must agree (fp32 within
1e-4). Last line: one JSON object with seconds per step, ratios and the loss
agreement.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging_core.losses import DiceCELoss  # noqa: E402
from imaging_core.nets import UNet3D, load_monai_state_dict  # noqa: E402

CFG = dict(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)


def make_step(net, loss_fn, amp: bool, lr: float):
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step(x, y) -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = net(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()
        return float(loss.detach())
    return step


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=7, help="timed steps per variant (median)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    ap.add_argument("--check-steps", type=int, default=3, help="steps whose losses are compared")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--no-channels-last", action="store_true", help="ours in NCDHW (ablation)")
    ap.add_argument("--only", default="", help="comma list of variants to run (ablation)")
    args = ap.parse_args(argv)

    from monai.losses import DiceCELoss as MonaiDiceCE
    from monai.networks.nets import UNet as MonaiUNet

    torch.manual_seed(0)
    ref = MonaiUNet(spatial_dims=3, in_channels=1, out_channels=3, **CFG)
    init = {k: v.clone() for k, v in ref.state_dict().items()}
    n_params = sum(p.numel() for p in ref.parameters())

    variants = {}
    for amp in (False, True):
        tag = "bf16" if amp else "fp32"
        m = MonaiUNet(spatial_dims=3, in_channels=1, out_channels=3, **CFG)
        m.load_state_dict(init)
        variants[f"monai {tag}"] = make_step(m, MonaiDiceCE(to_onehot_y=True, softmax=True), amp, args.lr)
        o = UNet3D(1, 3, channels_last=not args.no_channels_last, **CFG)
        load_monai_state_dict(o, init)
        assert sum(p.numel() for p in o.parameters()) == n_params
        variants[f"ours {tag}"] = make_step(o, DiceCELoss(to_onehot_y=True, softmax=True), amp, args.lr)
    if args.only:
        keep = [v.strip() for v in args.only.split(",")]
        variants = {k: v for k, v in variants.items() if k in keep}

    # A few fixed batches: a smooth-ish image and a blob label map, so the loss moves.
    g = torch.Generator().manual_seed(1)
    s = args.size
    batches = []
    for _ in range(3):
        x = torch.randn(args.batch, 1, s, s, s, generator=g)
        y = torch.randint(0, 3, (args.batch, 1, s, s, s), generator=g)
        zz = torch.linspace(-1, 1, s)
        r2 = zz.view(-1, 1, 1) ** 2 + zz.view(1, -1, 1) ** 2 + zz.view(1, 1, -1) ** 2
        y[:, :, r2 < 0.3] = 1
        y[:, :, r2 < 0.1] = 2
        x = x + y.float()
        batches.append((x, y))

    losses = {k: [] for k in variants}
    times = {k: [] for k in variants}
    total = args.warmup + args.steps
    t_start = time.perf_counter()
    for i in range(total):
        x, y = batches[i % len(batches)]
        for k, step in variants.items():
            t0 = time.perf_counter()
            loss = step(x, y)
            dt = time.perf_counter() - t0
            losses[k].append(loss)
            if i >= args.warmup:
                times[k].append(dt)
    wall = time.perf_counter() - t_start

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"UNet {CFG['channels']} res-units {CFG['num_res_units']}: {n_params:,} params; "
          f"batch {args.batch}x1x{s}^3, DiceCE + Adam; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.warmup} warm-up + {args.steps} timed steps each")
    print(f"{'variant':12s} {'median s':>9s} {'min s':>7s}   losses (first {args.check_steps})")
    for k in variants:
        print(f"{k:12s} {med[k]:9.3f} {min(times[k]):7.3f}   "
              + " ".join(f"{v:.6f}" for v in losses[k][:args.check_steps]))

    def diff(a: str, b: str):
        if a not in losses or b not in losses:
            return None
        n = args.check_steps
        return max(abs(u - v) for u, v in zip(losses[a][:n], losses[b][:n]))

    d32, d16 = diff("ours fp32", "monai fp32"), diff("ours bf16", "monai bf16")
    out = {
        "bench": "train_step", "shape": [args.batch, 1, s, s, s], "params": n_params,
        "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
        "monai_fp32_s": med.get("monai fp32"), "monai_bf16_s": med.get("monai bf16"),
        "ours_fp32_s": med.get("ours fp32"), "ours_bf16_s": med.get("ours bf16"),
        "loss_maxdiff_fp32": d32, "loss_maxdiff_bf16": d16,
        "loss_agree_fp32": None if d32 is None else bool(d32 <= 1e-4),
        "wall_s": round(wall, 1),
    }

    def ratio(a: str, b: str):
        return round(med[a] / med[b], 3) if a in med and b in med else None

    out["ratio_monai_fp32_over_ours_bf16"] = ratio("monai fp32", "ours bf16")  # headline
    out["ratio_monai_fp32_over_ours_fp32"] = ratio("monai fp32", "ours fp32")
    out["ratio_monai_bf16_over_ours_bf16"] = ratio("monai bf16", "ours bf16")
    for k in ("monai_fp32_s", "monai_bf16_s", "ours_fp32_s", "ours_bf16_s"):
        if out[k] is not None:
            out[k] = round(out[k], 4)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
