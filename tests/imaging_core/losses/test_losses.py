import warnings

import monai.losses as ml
import pytest
import torch

import imaging_core.losses as ol
from imaging_core.losses import loss_from_config

CASES = [
    ("DiceLoss", dict(softmax=True)),
    ("DiceLoss", dict(sigmoid=True)),
    ("DiceLoss", dict(softmax=True, include_background=False)),
    ("DiceLoss", dict(softmax=True, squared_pred=True)),
    ("DiceLoss", dict(softmax=True, batch=True)),
    ("DiceLoss", dict(sigmoid=True, jaccard=True, smooth_nr=0.0, smooth_dr=1e-6)),
    ("DiceLoss", dict(softmax=True, weight=[1.0, 2.0, 0.5])),
    ("DiceLoss", dict(softmax=True, reduction="sum")),
    ("DiceLoss", dict(softmax=True, reduction="none", include_background=False)),
    ("DiceCELoss", dict(softmax=True)),
    ("DiceCELoss", dict(sigmoid=True, include_background=False)),
    ("DiceCELoss", dict(softmax=True, batch=True, squared_pred=True, smooth_nr=0.0)),
    ("DiceCELoss", dict(softmax=True, weight=[1.0, 2.0, 3.0], lambda_ce=0.5, lambda_dice=2.0)),
    ("DiceCELoss", dict(softmax=True, weight=[1.0, 2.0, 3.0], include_background=False)),
    ("DiceCELoss", dict(softmax=True, label_smoothing=0.1)),
    ("DiceCELoss", dict(softmax=True, reduction="sum", jaccard=True)),
    ("GeneralizedDiceLoss", dict(softmax=True)),
    ("GeneralizedDiceLoss", dict(softmax=True, w_type="simple", include_background=False)),
    ("GeneralizedDiceLoss", dict(sigmoid=True, batch=True, w_type="uniform")),
    ("GeneralizedDiceLoss", dict(softmax=True, batch=True)),
    ("TverskyLoss", dict(softmax=True)),
    ("TverskyLoss", dict(softmax=True, alpha=0.3, beta=0.7, include_background=False)),
    ("TverskyLoss", dict(sigmoid=True, batch=True, reduction="sum")),
    ("DiceFocalLoss", dict(softmax=True)),
    ("DiceFocalLoss", dict(sigmoid=True, gamma=1.5, include_background=False)),
    ("DiceFocalLoss", dict(softmax=True, alpha=0.25, lambda_focal=2.0, weight=[1.0, 1.0, 2.0])),
    ("FocalLoss", dict()),
    ("FocalLoss", dict(use_softmax=True)),
    ("FocalLoss", dict(use_softmax=True, alpha=0.25, gamma=3.0)),
    ("FocalLoss", dict(gamma=0.0, weight=[1.0, 2.0, 3.0])),
    ("FocalLoss", dict(reduction="sum", alpha=0.75)),
    ("FocalLoss", dict(include_background=False, use_softmax=True, alpha=[0.3, 0.7])),
]


def _data(seed=0, b=2, c=3, shape=(6, 7, 5), absent=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, *shape, generator=g) * 3
    y = torch.randint(0, c, (b, 1, *shape), generator=g)
    if absent is not None:  # a class missing from the labels
        y[y == absent] = 0
    return x, y


@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("absent", [None, 2])
def test_values_and_gradients_match_monai(name, kw, absent):
    x, y = _data(absent=absent)
    kw = dict(kw, to_onehot_y=True)
    if "weight" in kw:  # MONAI's DiceCELoss needs a tensor here; ours takes either
        kw["weight"] = torch.tensor(kw["weight"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xr = x.clone().requires_grad_()
        ref = getattr(ml, name)(**kw)(xr, y)
    xo = x.clone().requires_grad_()
    ours = getattr(ol, name)(**kw)(xo, y)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    ref.sum().backward()
    ours.sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["DiceLoss", "DiceCELoss", "TverskyLoss", "GeneralizedDiceLoss"])
def test_one_hot_targets_without_to_onehot_match_monai(name):
    x, y = _data(1)
    t = torch.nn.functional.one_hot(y[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    ref = getattr(ml, name)(softmax=True)(x, t)
    torch.testing.assert_close(getattr(ol, name)(softmax=True)(x, t), ref, rtol=1e-5, atol=1e-5)


def test_single_channel_sigmoid_dice_ce_matches_monai():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 1, 5, 6, 7, generator=g)
    y = torch.randint(0, 2, (2, 1, 5, 6, 7), generator=g)
    ref = ml.DiceCELoss(sigmoid=True)(x, y)
    torch.testing.assert_close(ol.DiceCELoss(sigmoid=True)(x, y), ref, rtol=1e-5, atol=1e-5)


def test_label_map_without_channel_axis():
    x, y = _data(3)
    loss = ol.DiceCELoss(to_onehot_y=True, softmax=True)
    torch.testing.assert_close(loss(x, y[:, 0]), loss(x, y))
    f = ol.DiceFocalLoss(to_onehot_y=True, softmax=True)
    torch.testing.assert_close(f(x, y[:, 0]), f(x, y))


def test_bf16_logits_are_computed_in_fp32():
    x, y = _data(4)
    loss = ol.DiceCELoss(to_onehot_y=True, softmax=True)
    out = loss(x.bfloat16(), y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, loss(x.bfloat16().float(), y))


def test_bad_labels_and_shapes_raise():
    x, y = _data(5)
    with pytest.raises(ValueError):
        ol.DiceLoss(to_onehot_y=True, softmax=True)(x, y + 1)  # label 3 with 3 classes
    with pytest.raises(ValueError):
        ol.DiceLoss(softmax=True)(x, y)  # label map without to_onehot_y
    with pytest.raises(ValueError):
        ol.DiceLoss(softmax=True, sigmoid=True)
    with pytest.raises(ValueError):
        ol.DiceCELoss(reduction="none")
    with pytest.raises(ValueError):
        ol.DiceLoss(to_onehot_y=True, softmax=True, weight=[1.0, 2.0])(x, y)


def test_loss_from_config():
    assert isinstance(loss_from_config("dice_ce", to_onehot_y=True, softmax=True), ol.DiceCELoss)
    assert isinstance(loss_from_config("DiceCELoss"), ol.DiceCELoss)
    assert isinstance(loss_from_config("generalized_dice"), ol.GeneralizedDiceLoss)
    assert isinstance(loss_from_config("tversky", alpha=0.3, beta=0.7), ol.TverskyLoss)
    assert isinstance(loss_from_config("Dice-Focal"), ol.DiceFocalLoss)
    assert isinstance(loss_from_config("focal", use_softmax=True), ol.FocalLoss)
    assert isinstance(loss_from_config("dice"), ol.DiceLoss)
    with pytest.raises(ValueError):
        loss_from_config("hinge")
    with pytest.raises(TypeError):
        loss_from_config("dice", softmaxx=True)
