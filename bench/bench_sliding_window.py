"""Sliding-window inference: fedvox vs monai.inferers.sliding_window_inference.

The MONAI-shaped UNet (channels 16..256, strides 2x4, 2 residual units) with
IDENTICAL weights on both sides (ours loaded from MONAI's state dict), input
1x1x160^3, roi 96^3, overlap 0.5, Gaussian blending, sw_batch 4. MONAI runs
fp32 (its default); ours runs fp32 and bf16 autocast. Outputs are compared
(fp32: max abs diff; bf16: argmax agreement). Last line: one JSON object.

Ours keeps freed CPU memory for reuse (``keep_freed_memory``: glibc's mmap
threshold raised on its first CPU call, process-wide). MONAI is timed first,
with glibc's defaults, as a MONAI user runs it; it is timed once more after
ours ("monai fp32, same allocator"), to show what the allocator policy alone
is worth to it.

    python bench/bench_sliding_window.py [--repeats 3] [--size 160]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=160)
    a = ap.parse_args()
    from monai.inferers import sliding_window_inference as monai_swi
    from monai.networks.nets import UNet

    from imaging_core.inference import sliding_window_inference
    from imaging_core.nets import UNet3D, load_monai_state_dict

    torch.manual_seed(0)
    kw = dict(in_channels=1, out_channels=3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
              num_res_units=2)
    theirs = UNet(spatial_dims=3, **kw).eval()
    ours = load_monai_state_dict(UNet3D(**kw), theirs.state_dict()).eval()
    x = torch.randn(1, 1, a.size, a.size, a.size)
    roi, args = (96, 96, 96), dict(sw_batch_size=4, overlap=0.5, mode="gaussian")

    # warm-up once each (allocator, oneDNN primitive caches)
    with torch.inference_mode():
        ours(x[..., :96, :96, :96])
        theirs(x[..., :96, :96, :96])
    t_m, y_m = timed(lambda: monai_swi(x, roi, predictor=theirs, **args), a.repeats)
    t_o32, y_o32 = timed(lambda: sliding_window_inference(x, roi, ours, **args), a.repeats)
    t_o16, y_o16 = timed(lambda: sliding_window_inference(x, roi, ours, amp="bf16", **args), a.repeats)
    t_m2, _ = timed(lambda: monai_swi(x, roi, predictor=theirs, **args), a.repeats)
    diff32 = float((y_o32 - y_m).abs().max())
    agree16 = float((y_o16.argmax(1) == y_m.argmax(1)).float().mean())
    rows = [("monai fp32", t_m), ("fedvox fp32", t_o32), ("fedvox bf16", t_o16),
            ("monai fp32, same allocator", t_m2)]
    for name, t in rows:
        print(f"{name:26s} {t:7.3f} s   x{t / t_m:.2f} of MONAI")
    print(f"fp32 max |diff| {diff32:.2e}; bf16 argmax agreement {agree16:.5f}")
    print(json.dumps({"bench": "sliding_window", "size": a.size, "roi": 96, "overlap": 0.5, "sw_batch": 4,
                      "threads": torch.get_num_threads(), "repeats": a.repeats,
                      "monai_fp32_s": round(t_m, 3), "ours_fp32_s": round(t_o32, 3), "ours_bf16_s": round(t_o16, 3),
                      "ratio_ours_bf16_over_monai": round(t_o16 / t_m, 3),
                      "ratio_ours_fp32_over_monai": round(t_o32 / t_m, 3),
                      "monai_fp32_same_allocator_s": round(t_m2, 3),
                      "ratio_ours_fp32_over_monai_same_allocator": round(t_o32 / t_m2, 3),
                      "fp32_max_abs_diff": diff32, "bf16_argmax_agreement": agree16, "goal_ratio": 0.6}))


if __name__ == "__main__":
    main()
