"""Tests for undiffuse.nets: shapes, conditioning, memory formats, autocast and configs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from undiffuse.nets import UNET_PRESETS, MLPDenoiser, UNet, build_net, net_config, timestep_embedding

from helpers_nets import unzeroed




def tiny(**overrides) -> UNet:
    torch.manual_seed(0)
    return unzeroed(build_net("tiny", **overrides))


def inputs(batch: int = 2, channels: int = 1, size: int = 32, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g), torch.rand(batch, generator=g) * 1000


# --- the sinusoidal embedding ----------------------------------------------------------------------


def test_timestep_embedding_matches_hand_computed_values():
    labels = torch.tensor([1.0, 2.5], dtype=torch.float64)
    emb = timestep_embedding(labels, 5)
    assert emb.dtype == torch.float32 and emb.shape == (2, 5)
    # half = 2: frequencies 10000^0 = 1 and 10000^(-1/2) = 0.01; cosines first, odd dim zero-padded.
    t = 2.5
    expected = torch.tensor([math.cos(t), math.cos(0.01 * t), math.sin(t), math.sin(0.01 * t), 0.0])
    torch.testing.assert_close(emb[1], expected)


# --- U-Net shapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, batch, size", [
    ({}, 1, 32),
    ({}, 3, 28),
    ({"image_size": 8, "attn_resolutions": (4,)}, 3, 8),  # two levels at 8x8, attention at 4x4
    ({"out_channels": 2}, 2, 32),  # learned variance: twice the input channels
    ({"in_channels": 3, "channel_mult": (1, 2, 2), "num_res_blocks": 2}, 1, 16),
])
def test_unet_output_shape(overrides, batch, size):
    net = tiny(**overrides)
    x, t = inputs(batch, net.in_channels, size)
    out = net(x, t)
    assert out.shape == (batch, net.out_channels, size, size)
    assert torch.isfinite(out).all()


def test_unet_attention_placement():
    def attention_blocks(net: UNet) -> int:
        return sum(b.attn is not None for b in [*net.enc, *net.mid, *net.dec] if hasattr(b, "attn"))

    # tiny: one encoder and two decoder blocks at 16x16, plus the middle.
    assert attention_blocks(build_net("tiny")) == 4
    assert attention_blocks(build_net("tiny", attn_resolutions=())) == 1


def test_unet_rejects_indivisible_size():
    net = tiny()
    x, t = inputs(1, 1, 27)
    with pytest.raises(ValueError, match="divisible"):
        net(x, t)


def test_fresh_unet_outputs_zero():
    # The zero-initialised output conv makes the first prediction exactly 0 (ADM).
    x, t = inputs()
    assert torch.equal(build_net("tiny")(x, t), torch.zeros_like(x))


def test_ddpm_cifar10_parameter_count():
    net = build_net("ddpm-cifar10")
    count = sum(p.numel() for p in net.parameters())
    assert abs(count - 35.7e6) < 0.1e6, count


def test_every_parameter_gets_a_gradient():
    net = tiny(num_classes=3).train()
    x, t = inputs()
    net(x, t, torch.tensor([0, 3])).square().mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# --- conditioning ----------------------------------------------------------------------------------


def test_unet_class_conditioning():
    net = tiny(num_classes=10)
    x, t = inputs(2)
    a = net(x, t, torch.tensor([0, 0]))
    b = net(x, t, torch.tensor([7, 7]))
    assert not torch.allclose(a, b, atol=1e-4)
    # None means the null class, row num_classes.
    torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([10, 10])))
    assert not torch.allclose(net(x, t), a, atol=1e-4)


def test_labels_without_classes_raise():
    x, t = inputs()
    with pytest.raises(ValueError, match="num_classes"):
        tiny()(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        unzeroed(MLPDenoiser())(torch.randn(2, 2), t, torch.tensor([0, 1]))


def test_unet_noise_label_conditioning():
    net = tiny()
    x, t = inputs(2)
    assert not torch.allclose(net(x, t), net(x, t + 100.0), atol=1e-4)
    # float64 labels are cast, and one label is shared across the batch.
    torch.testing.assert_close(net(x, t.double()), net(x, t))
    torch.testing.assert_close(net(x, torch.tensor(500.0)), net(x, torch.full((2,), 500.0)))


# --- memory format and autocast --------------------------------------------------------------------


def test_channels_last_matches_contiguous():
    net = tiny(num_classes=4)
    x, t = inputs(3)
    y = torch.tensor([0, 2, 4])
    ref = net(x, t, y)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.to(memory_format=torch.channels_last), t, y)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_close_to_fp32():
    net = tiny(num_classes=4)
    x, t = inputs(2)
    ref = net(x, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x.to(memory_format=torch.channels_last), t.double())
    assert out.shape == ref.shape
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel


# --- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, overrides, x", [
    ("mnist-small", {"num_classes": 10, "out_channels": 2}, torch.randn(2, 1, 32, 32)),
    ("mlp", {"hidden": 64, "num_blocks": 2, "num_classes": 3}, torch.randn(2, 2)),
])
def test_config_round_trip(name, overrides, x):
    net = unzeroed(build_net(name, **overrides))
    config = json.loads(json.dumps(net_config(net)))
    assert config["type"] in ("unet", "mlp") and all(config[k] == v for k, v in overrides.items())
    rebuilt = build_net(config).eval()
    assert [(n, p.shape) for n, p in rebuilt.named_parameters()] == [(n, p.shape) for n, p in net.named_parameters()]
    rebuilt.load_state_dict(net.state_dict())
    t, y = torch.tensor([10.0, 900.0]), torch.tensor([1, 2])
    assert torch.equal(rebuilt(x, t, y), net(x, t, y))


def test_build_net_presets_and_errors():
    assert {"ddpm-cifar10", "tiny", "mnist-small"} <= set(UNET_PRESETS)
    assert net_config(build_net({"type": "unet", "channels": 32}))["channels"] == 32
    assert isinstance(build_net("mlp"), MLPDenoiser)
    with pytest.raises(ValueError, match="unknown net"):
        build_net("no-such-net")
    with pytest.raises(ValueError, match="type"):
        build_net({"channels": 32})


# --- MLP -------------------------------------------------------------------------------------------


def test_mlp_shapes_and_conditioning():
    torch.manual_seed(0)
    x, t = torch.randn(5, 2), torch.rand(5) * 1000
    assert torch.equal(MLPDenoiser()(x, t), torch.zeros(5, 2))  # zero-initialised output layer
    assert unzeroed(MLPDenoiser(dim=3, out_dim=6))(torch.randn(5, 3), t).shape == (5, 6)

    net = unzeroed(MLPDenoiser(hidden=128, num_blocks=3, num_classes=4))
    out = net(x, t, torch.zeros(5, dtype=torch.long))
    assert out.shape == (5, 2)
    assert not torch.allclose(out, net(x, t, torch.full((5,), 2)), atol=1e-4)
    assert not torch.allclose(out, net(x, t + 100.0, torch.zeros(5, dtype=torch.long)), atol=1e-4)
    torch.testing.assert_close(net(x, t), net(x, t, torch.full((5,), 4)))
