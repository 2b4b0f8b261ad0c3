"""GPU results equal CPU results (runs only where CUDA and the CUDA ops exist)."""
import numpy as np
import pytest
import torch

from imaging_core.postprocess import bilateral_filter, connected_components, distance_transform

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA device: GPU ops not built or tested here")


@pytest.mark.parametrize("conn", [6, 18, 26])
def test_components_gpu_equals_cpu(ops, conn):
    rng = np.random.default_rng(0)
    for density in (0.2, 0.5, 0.8):
        m = torch.from_numpy(rng.random((33, 40, 47)) < density)
        cpu, n_cpu = connected_components(m, conn)
        gpu, n_gpu = connected_components(m.cuda(), conn)
        assert n_gpu == n_cpu and torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distance_gpu_equals_cpu(ops, dtype):
    rng = np.random.default_rng(1)
    m = torch.from_numpy(rng.random((30, 41, 52)) > 0.05)
    cpu = distance_transform(m, (0.8, 1.3, 2.5), dtype=dtype)
    gpu = distance_transform(m.cuda(), (0.8, 1.3, 2.5), dtype=dtype)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-6)


def test_bilateral_gpu_equals_cpu(ops):
    img = torch.rand(2, 2, 20, 22, 18)
    cpu = bilateral_filter(img, 2.0, 0.2, spacing=(1.0, 0.8, 1.5))
    gpu = bilateral_filter(img.cuda(), 2.0, 0.2, spacing=(1.0, 0.8, 1.5))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
