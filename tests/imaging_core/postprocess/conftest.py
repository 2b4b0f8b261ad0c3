"""The compiled ops are built (or loaded from the cache) on first use, inside
the test session; the summary line reports how long that took."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

_BUILD: dict = {}


@pytest.fixture(scope="module", autouse=True)
def ops():
    from imaging_core.postprocess.build import load_info, load_ops

    t0 = time.perf_counter()
    mod = load_ops()
    _BUILD.setdefault("seconds", time.perf_counter() - t0)
    _BUILD.setdefault("dir", str(load_info()["dir"]))
    return mod


def pytest_terminal_summary(terminalreporter):
    if _BUILD:
        terminalreporter.write_line(
            f"fedvox ops: built/loaded in {_BUILD['seconds']:.1f} s ({_BUILD['dir']})")


@pytest.fixture(scope="session")
def brute_filter():
    """Brute-force numpy (float64) reference for the windowed filters."""
    return windowed_filter


def windowed_filter(guide, val, spatial_sigma, range_sigma, spacing=(1.0, 1.0, 1.0),
                    exclude_center=False):
    """Exact box-windowed joint bilateral filter, one tap at a time.

    guide (Cg,X,Y,Z), val (Cv,X,Y,Z); range_sigma None = Gaussian only.
    Radius ceil(3 sigma_k / spacing_k) per axis, clipped at the border.
    """
    guide = np.asarray(guide, np.float64)
    val = np.asarray(val, np.float64)
    ss = spatial_sigma if isinstance(spatial_sigma, (tuple, list)) else (spatial_sigma,) * 3
    r = [math.ceil(3 * s / h - 1e-9) for s, h in zip(ss, spacing)]
    shape = guide.shape[1:]
    gp = np.pad(guide, [(0, 0)] + [(k, k) for k in r], constant_values=np.nan)
    vp = np.pad(val, [(0, 0)] + [(k, k) for k in r], constant_values=0.0)
    num = np.zeros_like(val)
    den = np.zeros(shape)
    for dx in range(-r[0], r[0] + 1):
        for dy in range(-r[1], r[1] + 1):
            for dz in range(-r[2], r[2] + 1):
                if exclude_center and dx == dy == dz == 0:
                    continue
                sl = (slice(None),) + tuple(slice(k + d, k + d + n)
                                            for k, d, n in zip(r, (dx, dy, dz), shape))
                gq, vq = gp[sl], vp[sl]
                valid = ~np.isnan(gq[0])
                t = sum((d * h) ** 2 / (2 * s * s) for d, h, s in zip((dx, dy, dz), spacing, ss))
                if range_sigma is not None:
                    t = t + np.nansum((gq - guide) ** 2, axis=0) / (2 * range_sigma ** 2)
                w = np.where(valid, np.exp(-t), 0.0)
                num += w * vq
                den += w
    return num / den
