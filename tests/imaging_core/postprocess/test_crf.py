import numpy as np
import pytest
import torch

from imaging_core.postprocess import crf_refine, potts

PARAMS = dict(bilateral_weight=3.0, gaussian_weight=1.0, bilateral_spatial_sigma=2.0,
              bilateral_color_sigma=0.3, gaussian_spatial_sigma=1.0)


def _sphere_case(size=24, radius=7.0, noise=1.5, seed=0):
    """Ground-truth sphere, a noisy image of it and a noisy 2-class prediction."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    gt = ((g - (size - 1) / 2) ** 2).sum(0).sqrt() < radius
    image = (gt.float() + 0.15 * torch.randn(gt.shape, generator=gen))[None]
    logit = (2 * gt.float() - 1) + noise * torch.randn(gt.shape, generator=gen)
    pf = torch.sigmoid(logit)
    return gt, image, torch.stack([1 - pf, pf])


def _dice(a, b):
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def _messages(q, image, brute_filter, p):
    """wg * G[q] + wb * K[q] with the brute-force exact kernels (self included)."""
    g = brute_filter(q, q, p["gaussian_spatial_sigma"], None)
    k = brute_filter(image, q, p["bilateral_spatial_sigma"], p["bilateral_color_sigma"])
    return p["gaussian_weight"] * g + p["bilateral_weight"] * k


def _energy(labels, probs, image, brute_filter, p, mu):
    """CRF energy of a hard labelling: unary -log P plus mu-weighted messages."""
    L = probs.shape[0]
    onehot = np.stack([(labels == l) for l in range(L)]).astype(np.float64)
    m = _messages(onehot, image, brute_filter, p)
    pen = np.einsum("kl,l...->k...", mu, m)
    unary = -np.log(np.clip(probs, 1e-8, None))
    return float((onehot * (unary + pen)).sum())


@pytest.mark.parametrize("method", ["lattice", "exact"])
def test_noisy_sphere_gets_closer_to_truth(ops, method):
    gt, image, probs = _sphere_case()
    before = _dice(probs.argmax(0) == 1, gt)
    q = crf_refine(probs, image, iterations=5, method=method, **PARAMS)
    assert q.shape == probs.shape and q.dtype == torch.float32
    torch.testing.assert_close(q.sum(0), torch.ones(q.shape[1:]), rtol=0, atol=1e-5)
    after = _dice(q.argmax(0) == 1, gt)
    assert before < 0.8 and after > 0.95 and after > before + 0.15, (before, after)


def test_energy_and_disagreement_decrease(ops, brute_filter):
    gt, image, probs = _sphere_case(size=18, radius=5.0, noise=1.2, seed=3)
    p, img = probs.numpy().astype(np.float64), image.numpy().astype(np.float64)
    mu = potts(2).numpy()
    q = crf_refine(probs, image, iterations=5, method="exact", **PARAMS).numpy()
    e0 = _energy(p.argmax(0), p, img, brute_filter, PARAMS, mu)
    e1 = _energy(q.argmax(0), p, img, brute_filter, PARAMS, mu)
    assert e1 < e0, (e0, e1)

    def disagreement(lab):  # 6-neighbour label changes
        return sum(int((np.diff(lab, axis=a) != 0).sum()) for a in range(3))
    assert disagreement(q.argmax(0)) < 0.5 * disagreement(p.argmax(0))


@pytest.mark.parametrize("compat", [None, "custom"])
def test_exact_mean_field_matches_numpy_reference(ops, brute_filter, compat):
    rng = np.random.default_rng(5)
    L, shape = 3, (9, 10, 8)
    probs = rng.dirichlet(np.ones(L), size=shape).transpose(3, 0, 1, 2)
    image = rng.random((2,) + shape)  # two guide channels
    mu = potts(L).numpy() if compat is None else rng.random((L, L)).astype(np.float32)
    q = probs.copy()
    for _ in range(3):
        pen = np.einsum("kl,l...->k...", mu.astype(np.float64), _messages(q, image, brute_filter, PARAMS))
        logits = np.log(probs) - pen
        q = np.exp(logits - logits.max(0))
        q /= q.sum(0)
    ours = crf_refine(torch.from_numpy(probs).float(), torch.from_numpy(image).float(),
                      iterations=3, method="exact",
                      compatibility=None if compat is None else torch.from_numpy(mu), **PARAMS)
    np.testing.assert_allclose(ours.numpy(), q, atol=2e-5)


def test_lattice_close_to_exact(ops):
    gt, image, probs = _sphere_case(seed=1)
    a = crf_refine(probs, image, method="lattice", **PARAMS)
    b = crf_refine(probs, image, method="exact", **PARAMS)
    assert float((a.argmax(0) == b.argmax(0)).float().mean()) > 0.97
    assert float((a - b).abs().mean()) < 0.05


def test_zero_iterations_batch_numpy_and_compatibility(ops):
    gt, image, probs = _sphere_case(size=12)
    scaled = probs * 3.0  # renormalised per voxel
    q0 = crf_refine(scaled.numpy()[None], image.numpy()[None], iterations=0)
    assert isinstance(q0, np.ndarray) and q0.shape == (1,) + tuple(probs.shape)
    np.testing.assert_allclose(q0[0], probs.clamp_min(1e-8).numpy(), rtol=1e-5, atol=1e-6)
    # No compatibility cost: the messages change nothing.
    qz = crf_refine(probs, image, compatibility=torch.zeros(2, 2))
    torch.testing.assert_close(qz, probs, rtol=1e-5, atol=1e-6)
    # Explicit Potts equals the default; a batch of two equals two calls.
    torch.testing.assert_close(crf_refine(probs, image, compatibility=potts(2)),
                               crf_refine(probs, image))
    batch = crf_refine(torch.stack([probs, probs.flip(0)]), torch.stack([image, image]))
    torch.testing.assert_close(batch[1], crf_refine(probs.flip(0), image))


@pytest.mark.parametrize("change, match", [
    (dict(probs=-1), ">= 0"),
    (dict(probs="nan"), "NaN"),
    (dict(image="nan"), "NaN"),
    (dict(image="shape"), "spatial shape"),
    (dict(image="dims"), "same layout"),
    (dict(probs="one-label"), "labels"),
    (dict(probs="int"), "floating point"),
    (dict(bilateral_spatial_sigma=0.0), "bilateral_spatial_sigma"),
    (dict(bilateral_color_sigma=-1.0), "bilateral_color_sigma"),
    (dict(gaussian_spatial_sigma=float("inf")), "gaussian_spatial_sigma"),
    (dict(bilateral_weight=-1.0), "bilateral_weight"),
    (dict(iterations=-1), "iterations"),
    (dict(iterations=2.5), "iterations"),
    (dict(compatibility=torch.zeros(3, 3)), "compatibility"),
    (dict(method="fast"), "method"),
    (dict(spacing=(1.0, 0.0, 1.0)), "spacing"),
    (dict(image="meta"), "device"),
])
def test_bad_input(ops, change, match):
    gt, image, probs = _sphere_case(size=6)
    kw = {}
    for k, v in change.items():
        if k == "probs":
            probs = {-1: probs - 1.0, "nan": probs.masked_fill(gt[None], float("nan")),
                     "one-label": probs[:1], "int": (probs > 0.5).long()}[v]
        elif k == "image":
            image = {"nan": image.masked_fill(gt[None], float("nan")), "shape": image[:, :5],
                     "dims": image[0], "meta": image.to("meta")}[v]
        else:
            kw[k] = v
    with pytest.raises(ValueError, match=match):
        crf_refine(probs, image, **kw)
