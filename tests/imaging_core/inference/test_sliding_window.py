import numpy as np
import pytest
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference as monai_swi

from imaging_core.inference import importance_map, sliding_window_inference, window_starts


def _net(seed=0, out=3):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4),
                               torch.nn.PReLU(), torch.nn.Conv3d(4, out, 3, padding=1)).eval()


@pytest.mark.parametrize("roi, sigma", [((16, 16, 16), 0.125), ((7, 12, 9), 0.25)])
def test_importance_map_matches_monai(roi, sigma):
    ours = importance_map(roi, "gaussian", sigma)
    ref = compute_importance_map(roi, mode="gaussian", sigma_scale=sigma)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-7)


def test_window_starts_match_monai():
    rng = np.random.default_rng(0)
    for _ in range(50):
        size, roi = int(rng.integers(1, 200)), int(rng.integers(1, 100))
        ov = float(rng.uniform(0, 0.95))
        if roi >= size:
            assert window_starts(size, roi, ov) == [0]
            continue
        step = max(int(roi * (1 - ov)), 1)
        ref = sorted({s[0].start for s in dense_patch_slices((size,), (roi,), (step,))})
        assert window_starts(size, roi, ov) == ref


@pytest.mark.parametrize("shape, roi, overlap, mode, swb", [
    ((2, 1, 40, 33, 21), (16, 16, 16), 0.5, "gaussian", 3),
    ((1, 1, 10, 30, 17), (16, 16, 16), 0.25, "constant", 1),  # smaller than roi: padded
    ((1, 1, 37, 29, 31), (24, 20, 16), 0.6, "gaussian", 4),
])
def test_equals_monai_fp32(shape, roi, overlap, mode, swb):
    net = _net()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = monai_swi(x, roi, swb, net, overlap=overlap, mode=mode)
    ours = sliding_window_inference(x, roi, net, sw_batch_size=swb, overlap=overlap, mode=mode)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_amp_and_output_device_and_progress():
    net = _net()
    x = torch.randn((1, 1, 30, 30, 30), generator=torch.Generator().manual_seed(2))
    ref = sliding_window_inference(x, (16, 16, 16), net, overlap=0.5)
    calls = []
    bf = sliding_window_inference(x, (16, 16, 16), net, overlap=0.5, amp="bf16", out_device="cpu",
                                  progress=lambda d, t: calls.append((d, t)))
    assert bf.dtype == torch.float32
    assert (bf - ref).abs().max() < 0.05 * ref.abs().max()
    assert calls[-1][0] == calls[-1][1] == 27


def test_flip_tta_is_equivariant_and_averages():
    # a flip-equivariant predictor (pointwise) gives the same result with TTA
    pointwise = torch.nn.Conv3d(1, 2, 1).eval()
    x = torch.randn((1, 1, 20, 18, 16), generator=torch.Generator().manual_seed(3))
    a = sliding_window_inference(x, (8, 8, 8), pointwise, overlap=0.5)
    b = sliding_window_inference(x, (8, 8, 8), pointwise, overlap=0.5, flip_tta=True)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # a non-equivariant one changes
    net = _net()
    c = sliding_window_inference(x, (8, 8, 8), net, overlap=0.5)
    d = sliding_window_inference(x, (8, 8, 8), net, overlap=0.5, flip_tta=True)
    assert not torch.allclose(c, d)


def test_bad_arguments():
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), (4, 4, 4), _net(), overlap=1.0)
    with pytest.raises(ValueError, match="spatial dims"):
        sliding_window_inference(torch.zeros(1, 8, 8, 8), (4, 4, 4), _net())


def _minor_faults(fn) -> int:
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fn()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_cpu_inference_keeps_freed_memory_for_reuse():
    """After a CPU sliding window, freeing and re-allocating a 64 MB buffer no longer
    page-faults it in again (glibc); off with FEDVOX_KEEP_FREED_MEMORY=0."""
    import os
    import subprocess
    import sys

    from imaging_core.inference import sliding_window as sw
    if not sys.platform.startswith("linux"):
        pytest.skip("allocator policy is set on Linux (glibc) only")
    sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), (4, 4, 4), lambda t: t, overlap=0.0)
    if not sw.keep_freed_memory():
        pytest.skip("not glibc here: nothing to tune")

    def cycle():
        torch.ones(16 << 20).sum()  # 64 MB, freed at once

    cycle()
    assert _minor_faults(cycle) < 1000  # ~16k 4-KiB pages when glibc mmaps it afresh
    code = ("import torch\nfrom imaging_core.inference import sliding_window as sw\n"
            "sw.sliding_window_inference(torch.zeros(1, 1, 8, 8, 8), (4, 4, 4), lambda t: t)\n"
            "print(sw.keep_freed_memory())\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = dict(os.environ, FEDVOX_KEEP_FREED_MEMORY="0",
               PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False"]
