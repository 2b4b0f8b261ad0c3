import io
import json

import pytest
import torch
from monai.networks.nets import UNet as MonaiUNet

from imaging_core.nets import (UNet3D, load_monai_state_dict, monai_key_map, small_unet,
                               to_monai_state_dict, unet_from_config)

DEFAULT = dict(channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
CONFIGS = [
    DEFAULT,
    dict(channels=(8, 16, 32), strides=(2, 2), num_res_units=1),
    dict(channels=(8, 16, 32), strides=(2, 2), num_res_units=0),
    dict(channels=(4, 8, 16, 16), strides=(2, 1, 2), num_res_units=3),
]


def _pair(cfg, seed=0, in_ch=1, out_ch=3, **ours_kw):
    torch.manual_seed(seed)
    ref = MonaiUNet(spatial_dims=3, in_channels=in_ch, out_channels=out_ch, **cfg)
    ours = UNet3D(in_ch, out_ch, **cfg, **ours_kw)
    load_monai_state_dict(ours, ref.state_dict())
    return ref, ours


def _n(net):
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("cfg", CONFIGS)
def test_parameter_count_matches_monai(cfg):
    ref = MonaiUNet(spatial_dims=3, in_channels=1, out_channels=3, **cfg)
    assert _n(UNet3D(1, 3, **cfg)) == _n(ref)


def test_default_is_monai_default_unet():
    # MONAI 1.6.1 UNet(3, 1, 3, (16..256), (2,2,2,2), num_res_units=2).
    assert _n(UNet3D()) == 4_807_482


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("channels_last", [True, False])
def test_monai_weights_give_monai_outputs(cfg, channels_last):
    ref, ours = _pair(cfg, channels_last=channels_last)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_batch_norm_and_eval_mode_match_monai():
    cfg = dict(channels=(4, 8, 16), strides=(2, 2), num_res_units=1, norm="batch", act="relu")
    torch.manual_seed(0)
    ref = MonaiUNet(spatial_dims=3, in_channels=2, out_channels=2, **{**cfg, "norm": "BATCH",
                                                                        "act": "RELU"})
    ours = UNet3D(2, 2, **cfg)
    x = torch.randn(2, 2, 16, 16, 16)
    ref(x), ref(x)  # move the running statistics away from their init
    load_monai_state_dict(ours, ref.state_dict())
    ref.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_gradients_match_monai():
    cfg = CONFIGS[1]
    ref, ours = _pair(cfg)
    x = torch.randn(2, 1, 16, 16, 16)
    g = torch.randn(2, 3, 16, 16, 16)
    (ref(x) * g).sum().backward()
    (ours(x) * g).sum().backward()
    theirs = dict(ref.named_parameters())
    skipped = 0
    for name, p in ours.named_parameters():
        rg = theirs[monai_key_map(ours)[name]].grad
        if p.grad is None:
            # A conv bias right before instance norm cancels: MONAI's gradient is ~0 too.
            skipped += 1
            assert name.endswith("conv.bias")
            assert rg.abs().max() < 1e-4 * max(1.0, float(g.abs().max()))
        else:
            # fp32 sums in a different order: compare relative to the tensor's scale.
            assert (p.grad - rg).abs().max() <= 1e-4 * rg.abs().max() + 1e-6, name
    assert skipped > 0


def test_round_trip_to_monai():
    cfg = CONFIGS[1]
    torch.manual_seed(3)
    ours = UNet3D(1, 3, **cfg)
    ref = MonaiUNet(**ours.monai_config())
    ref.load_state_dict(to_monai_state_dict(ours))
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_wrong_monai_state_dict_is_rejected():
    ref = MonaiUNet(spatial_dims=3, in_channels=1, out_channels=3, **CONFIGS[1])
    with pytest.raises(KeyError):
        load_monai_state_dict(UNet3D(1, 3, **CONFIGS[2]), ref.state_dict())


def test_channels_last_is_only_a_layout_choice():
    torch.manual_seed(0)
    a = small_unet(1, 3)
    b = small_unet(1, 3, channels_last=False)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 1, 24, 24, 24)
    ya, yb = a(x), b(x)
    assert ya.is_contiguous()
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    # Input already channels-last, or a non-contiguous view, works the same.
    xc = x.contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(a(xc), ya, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a(x.transpose(2, 3).transpose(2, 3)), ya, rtol=1e-5, atol=1e-5)


def test_backward_runs_and_is_finite():
    net = small_unet(2, 4)
    x = torch.randn(2, 2, 16, 16, 16, requires_grad=True)
    net(x).square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bf16_autocast_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    net = small_unet(1, 3)
    x = torch.randn(2, 1, 16, 16, 16)
    ref = net(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16 and out.shape == (2, 3, 16, 16, 16)
    assert torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    out.float().mean().backward()


def test_trace_and_script_equal_eager():
    torch.manual_seed(0)
    net = UNet3D(1, 2, **CONFIGS[1]).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        ref = net(x)
        traced = torch.jit.trace(net, x)
        scripted = torch.jit.script(net)
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
        x2 = torch.randn(1, 1, 24, 16, 8)
        for m in (traced, scripted, loaded):
            torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded(x2), net(x2), rtol=0, atol=1e-6)


def test_config_round_trip_and_presets():
    net = UNet3D(2, 4, channels=(8, 16, 32), strides=(2, 2), num_res_units=1, dropout=0.1)
    cfg = json.loads(json.dumps(net.config()))
    again = unet_from_config(cfg)
    assert again.config() == net.config()
    again.load_state_dict(net.state_dict())
    small = unet_from_config({"preset": "small", "in_channels": 1, "out_channels": 2})
    assert small.config()["channels"] == [8, 16, 32, 64]
    assert 100_000 < _n(small) < 1_000_000
    assert _n(unet_from_config({})) == _n(UNet3D())
    with pytest.raises(ValueError):
        unet_from_config({"chanels": [4, 8]})


def test_small_unet_forward_shape():
    net = small_unet(1, 2)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 24, 32, 16)).shape == (1, 2, 24, 32, 16)


@pytest.mark.parametrize("kw", [dict(channels=(8,), strides=()), dict(strides=(2, 2)),
                                dict(norm="layer"), dict(act="gelu"), dict(kernel_size=2)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        UNet3D(**kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("grad_layout", ["same", "other"])
def test_prelu_backward_matches_torch(dtype, grad_layout):
    from imaging_core.nets.unet3d import PReLU
    torch.manual_seed(0)
    cl = torch.channels_last_3d
    x = torch.randn(2, 5, 6, 7, 8).to(dtype).contiguous(memory_format=cl)
    g = torch.randn(2, 5, 6, 7, 8).to(dtype)
    g = g.contiguous(memory_format=cl) if grad_layout == "same" else g.contiguous()
    ours, ref = PReLU(), torch.nn.PReLU()
    xo, xr = x.clone().requires_grad_(), x.float().clone().requires_grad_()
    yo = ours(xo)
    assert yo.dtype == dtype
    yo.backward(g)
    ref(xr).backward(g.float())
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(xo.grad.float(), xr.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=tol, atol=tol * 10)
    with torch.no_grad():
        torch.testing.assert_close(ours(x.float()), ref(x.float()))


def test_rejects_non_3d_input():
    with pytest.raises(ValueError):
        small_unet(1, 2)(torch.randn(1, 1, 16, 16))
