"""Tests for text conditioning inside the U-Net (undiffuse.nets.attention, TextConditioning, UNet).

Covers: cross-attention and the pooled embedding change the output, padded tokens have exactly no
effect, the masked attention equals attention over the real tokens alone, a caption with no tokens
is inert; a fresh text net computes exactly what the same net without text does; nets without
text have no new parameters and old configs still build; placement, config round trip, errors.
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from undiffuse.nets import CrossAttentionBlock, build_net, net_config
from undiffuse.nets.attention import position_features
from undiffuse.text.encoders import TextEmbedding

from helpers_nets import unzeroed
from helpers_text import FakeEncoder

CAPTIONS = ["a small red circle at the top", "two"]  # the second is mostly padding




def text_net(**overrides) -> nn.Module:
    torch.manual_seed(0)
    return unzeroed(build_net("tiny", context_dim=16, **overrides))


def inputs(batch: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 1, size, size, generator=g), torch.rand(batch, generator=g) * 1000


def replace(emb: TextEmbedding, **fields) -> TextEmbedding:
    return TextEmbedding(**{"tokens": emb.tokens, "mask": emb.mask, "pooled": emb.pooled, **fields})


def test_padded_tokens_have_no_effect_and_real_ones_do():
    net, (x, t) = text_net(), inputs()
    emb = FakeEncoder(max_length=8).encode(CAPTIONS)
    assert not emb.mask[1].all() and emb.mask[1].any()
    out = net(x, t, emb)
    junk = torch.randn(emb.tokens.shape, generator=torch.Generator().manual_seed(2)) * 100
    padded = replace(emb, tokens=torch.where(emb.mask[..., None], emb.tokens, junk))
    assert torch.equal(net(x, t, padded), out)
    # A real token, the pooled embedding, another caption: each changes the output. (Not by a
    # constant shift: the LayerNorms in front of attention and pooling would remove it.)
    real = emb.tokens.clone()
    real[:, 1] = junk[:, 1]
    assert not torch.allclose(net(x, t, replace(emb, tokens=real)), out, atol=1e-4)
    assert not torch.allclose(net(x, t, replace(emb, pooled=junk[:, 0])), out, atol=1e-4)
    other = FakeEncoder(max_length=8).encode(["a large blue square", "three"])
    assert not torch.allclose(net(x, t, other), out, atol=1e-4)


def test_masked_attention_equals_attention_over_the_real_tokens_alone():
    torch.manual_seed(0)
    block = unzeroed(CrossAttentionBlock(channels=16, context_dim=12, head_dim=8))  # two heads
    assert block.num_heads == 2
    x, tokens = torch.randn(2, 16, 4, 4), torch.randn(2, 6, 12)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    out = block(x, tokens, mask)
    for i, n in enumerate([6, 3]):
        alone = block(x[i:i + 1], tokens[i:i + 1, :n], torch.ones(1, n, dtype=torch.bool))
        torch.testing.assert_close(out[i:i + 1], alone, rtol=1e-5, atol=1e-6)
    # No real token at all: the block is the identity for that row, not NaN.
    empty = block(x, tokens, torch.zeros(2, 6, dtype=torch.bool))
    assert torch.equal(empty, x)


def test_fresh_text_net_computes_what_the_net_without_text_does():
    torch.manual_seed(0)
    plain = unzeroed(build_net("tiny"))
    text = build_net("tiny", context_dim=16).eval()  # the cross-attention outputs and pooled projection start at 0
    missing, unexpected = text.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".cross_attn." in k or k.startswith("text_cond.") for k in missing)
    x, t = inputs()
    emb = FakeEncoder().encode(CAPTIONS)
    assert torch.equal(text(x, t, emb), plain(x, t))


def test_nets_without_text_pay_nothing_and_old_configs_build():
    for overrides in ({}, {"num_classes": 10}):
        net = build_net("tiny", **overrides)
        names = [n for n, _ in net.named_parameters()]
        assert not any("cross_attn" in n or "text_cond" in n for n in names)
        assert net.text_cond is None and all(b.cross_attn is None for b in net.modules() if hasattr(b, "cross_attn"))
        config = net_config(net)
        assert config["context_dim"] is None and config["cross_attn_resolutions"] is None
    assert sum(p.numel() for p in build_net("tiny").parameters()) == 190_369  # as before text existed
    # A config saved before text existed (runs/demo/config.json) lacks the two keys.
    old = {k: v for k, v in net_config(build_net("mnist-demo")).items()
           if k not in ("context_dim", "cross_attn_resolutions")}
    assert isinstance(build_net(old), nn.Module)
    # A preset carrying cross-attention resolutions builds without text too, with no cross-attention.
    assert net_config(build_net("text-small"))["cross_attn_resolutions"] is None


def test_position_features_tell_every_pixel_apart():
    for c, h, w in [(32, 16, 16), (64, 8, 8), (30, 4, 6)]:
        p = position_features(c, h, w)
        k = c // 4
        assert p.shape == (c, h, w) and p.abs().max() <= 1 and not p[4 * k:].any()
        flat = p.reshape(c, -1).T
        dist = torch.cdist(flat, flat) + torch.eye(h * w) * 10
        assert dist.min() > 0.5  # no two pixels share an embedding
        # The lowest frequency is half a period across the map: a ramp down y, then across x.
        assert (p[0].diff(dim=0) > 0).all() and (p[0].diff(dim=1) == 0).all()
        assert (p[2 * k].diff(dim=1) > 0).all() and (p[2 * k].diff(dim=0) == 0).all()


def test_positions_let_cross_attention_place_a_caption():
    # On a spatially constant feature map, cross-attention without positions adds the same thing
    # at every pixel: "at the top left" cannot be drawn anywhere in particular. With positions the
    # queries differ, so what each pixel reads from the caption does.
    tokens, mask = torch.randn(1, 5, 12), torch.ones(1, 5, dtype=torch.bool)
    x = torch.randn(1, 16, 1, 1).expand(1, 16, 8, 8).contiguous()
    spread = {}
    for positions in (False, True):
        torch.manual_seed(0)
        block = unzeroed(CrossAttentionBlock(channels=16, context_dim=12, head_dim=8, positions=positions))
        out = block(x, tokens, mask)
        spread[positions] = (out - out.mean(dim=(2, 3), keepdim=True)).abs().max().item()
    assert spread[False] < 1e-5 and spread[True] > 1e-2
    # The preset for captions has them; nets saved without the key build without them.
    assert net_config(build_net("text-small", context_dim=16))["cross_attn_positions"] is True
    old = {k: v for k, v in net_config(build_net("text-small", context_dim=16)).items() if k != "cross_attn_positions"}
    assert not build_net(old).mid[0].cross_attn.positions
    assert net_config(build_net("text-small"))["cross_attn_positions"] is False  # no text, no positions


def test_cross_attention_placement_and_config_round_trip():
    net = unzeroed(build_net("text-small", in_channels=1, context_dim=16))
    assert net_config(net)["cross_attn_resolutions"] == [16, 8]
    where = {32: [], 16: [], 8: []}
    for i, block in enumerate(net.enc):
        if hasattr(block, "cross_attn"):
            where[32 >> (i // 2)].append(block.cross_attn is not None)  # one block + one downsample per level
    assert where == {32: [False], 16: [True], 8: [True]}
    assert net.mid[0].cross_attn is not None and net.mid[1].cross_attn is None
    rebuilt = build_net(json.loads(json.dumps(net_config(net)))).eval()
    rebuilt.load_state_dict(net.state_dict())
    x, t = inputs()
    emb = FakeEncoder().encode(CAPTIONS)
    assert torch.equal(rebuilt(x, t, emb), net(x, t, emb))


def test_text_net_under_bf16_autocast_and_channels_last():
    net, (x, t) = text_net(), inputs()
    emb = FakeEncoder().encode(CAPTIONS)
    ref = net(x, t, emb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, t, emb).float()
    assert torch.isfinite(low).all() and (low - ref).abs().max() < 0.1 * ref.abs().max()
    cl = net(x.contiguous(memory_format=torch.channels_last), t, emb)
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)


def test_wrong_conditions_are_refused():
    x, t = inputs()
    emb = FakeEncoder().encode(CAPTIONS)
    with pytest.raises(ValueError, match="text-conditional"):
        text_net()(x, t, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="NULL_CAPTION"):
        text_net()(x, t)
    with pytest.raises(ValueError, match="without context_dim"):
        build_net("tiny")(x, t, emb)
    with pytest.raises(ValueError, match="another encoder"):
        build_net("tiny", context_dim=32)(x, t, emb)
    with pytest.raises(ValueError, match="not both"):
        build_net("tiny", context_dim=16, num_classes=10)
