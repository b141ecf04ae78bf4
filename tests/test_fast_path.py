"""Tests that the fast path (issue #9, docs/speed.md) changes nothing beyond rounding.

Covers: the chunked attention equals SDPA's math kernel in fp32, forward and gradients, across chunk
boundaries; the attention backend switch; fp32 and bf16 agree on the loss and on samples within
stated tolerances; channels_last equals contiguous; a compiled net equals the eager one; the
--compile / --no-compile flags; a compile that fails (when asked for, or at the first step) warns
and trains eagerly with the same random numbers. No wall-clock times are asserted.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from undiffuse.config import TrainConfig
from undiffuse.data import TensorData
from undiffuse.denoiser import Denoiser
from undiffuse.losses import diffusion_loss
from undiffuse.nets import attention, build_net
from undiffuse.nets.attention import attend, attention_backend, chunked_attention
from undiffuse.pipeline import Pipeline
from undiffuse.processes import make_process
from undiffuse.trainer import Trainer

# Small enough to compile in seconds; attention at 8x8 with 2 heads of 8 (the chunked path's case).
SMALL = dict(type="unet", in_channels=1, image_size=16, channels=16, channel_mult=(1, 2), num_res_blocks=1,
             attn_resolutions=(8,), head_dim=8, dropout=0.0, num_classes=10)


def unzeroed(net: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise convs and linears, undoing the zero-inits so every block changes the output."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return net


def small_denoiser(seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)  # the class embedding's initial table too (unzeroed resets convs and linears)
    return Denoiser(unzeroed(build_net(SMALL), seed), make_process("ddpm:cosine:1000"), "v", clip_x0=1.0)


def batch(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 1, 16, 16, generator=g) * 2 - 1
    return (x0, torch.randint(0, 10, (n,), generator=g), torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01,
            torch.randn(n, 1, 16, 16, generator=g))


def loss_and_grads(den: Denoiser, bf16: bool = False, fmt=torch.contiguous_format):
    x0, y, t, noise = batch()
    den.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = diffusion_loss(den, x0.contiguous(memory_format=fmt), y, t=t, noise=noise).mean()
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in den.parameters()])


# --- attention --------------------------------------------------------------------------------------


@pytest.mark.parametrize("recompute", [False, True])
def test_chunked_attention_equals_sdpa_math_forward_and_gradients(monkeypatch, recompute):
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 3 * 40 * 40)  # 3 slices per chunk: 8 slices -> 3 chunks
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 40, 8, generator=g, requires_grad=True) for _ in range(3))
    grad = torch.randn(2, 4, 40, 8, generator=g)
    out = chunked_attention(q, k, v, recompute)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_attention_backend_choice_and_fp32_default_unchanged():
    q = k = v = torch.randn(1, 2, 16, 8)
    with sdpa_kernel(SDPBackend.MATH):
        ref = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(attend(q, k, v), F.scaled_dot_product_attention(q, k, v))  # fp32: SDPA itself
    with attention_backend("chunked"):
        torch.testing.assert_close(attend(q, k, v), ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="choose one of"):
        with attention_backend("flash"):
            pass


def test_bf16_attention_is_chunked_and_close_to_fp32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 64, 8, generator=g) for _ in range(3))
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    with attention_backend("sdpa"):
        sdpa = attend(q.bfloat16(), k.bfloat16(), v.bfloat16())
    ref = F.scaled_dot_product_attention(q, k, v)
    # bf16 has 8 bits of mantissa: errors of a few 1e-3 on O(1) outputs are rounding; both agree alike.
    assert (out.float() - ref).abs().max() < 2e-2 and (sdpa.float() - ref).abs().max() < 2e-2


# --- precision, memory format, compilation ---------------------------------------------------------


def test_fp32_and_bf16_losses_and_gradients_agree():
    den = small_denoiser()
    loss32, g32 = loss_and_grads(den)
    loss16, g16 = loss_and_grads(den, bf16=True)
    # Measured: relative loss difference 7e-5, gradient cosine 0.9998; the bounds leave >= 10x room.
    assert abs(loss16 - loss32) / loss32 < 1e-3
    assert F.cosine_similarity(g16, g32, dim=0) > 0.99


def test_fp32_and_bf16_samples_agree():
    pipe = Pipeline(small_denoiser(), (1, 16, 16), num_classes=10)
    kw = dict(sampler="ddim", num_inference_steps=8, class_labels=[3, 7, 1, 0], guidance=2.0, seed=0)
    x32 = pipe.sample(4, **kw)
    x16 = pipe.sample(4, bf16=True, **kw)  # bf16 autocast over a bf16 copy of the weights
    assert x16.dtype == torch.float32 and not x16.is_inference()
    # Same noise, same deterministic sampler: only rounding differs. Measured on [-1, 1] data:
    # mean |diff| 0.004, max 0.039 (autocast over float32 weights: the same); bounds ~7x that.
    assert (x16 - x32).abs().mean() < 0.03 and (x16 - x32).abs().max() < 0.3
    assert next(pipe.denoiser.parameters()).dtype == torch.float32  # the EMA weights stay float32


def test_bf16_copy_of_a_text_net_runs_and_keeps_layernorms_float32():
    from undiffuse.compiling import bf16_inference_copy
    from undiffuse.text.encoders import TextEmbedding

    net = unzeroed(build_net("tiny", context_dim=16)).eval()
    fast = bf16_inference_copy(net)
    assert fast.text_cond.token_norm.weight.dtype == torch.float32 and fast.conv_in.weight.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(0)
    text = TextEmbedding(torch.randn(2, 5, 16, generator=g), torch.ones(2, 5, dtype=torch.bool),
                         torch.randn(2, 16, generator=g))
    x, t = torch.randn(2, 1, 32, 32, generator=g), torch.tensor([10.0, 900.0])
    with torch.inference_mode():
        ref = net(x, t, text)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(x, t, text).float()
    assert (out - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_channels_last_equals_contiguous():
    den = small_denoiser()
    loss, grads = loss_and_grads(den)
    den_cl = small_denoiser().to(memory_format=torch.channels_last)
    loss_cl, grads_cl = loss_and_grads(den_cl, fmt=torch.channels_last)
    torch.testing.assert_close(loss_cl, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads_cl, grads, rtol=1e-4, atol=1e-5)


def test_compiled_equals_eager():
    pytest.importorskip("torch._inductor")
    den = small_denoiser()
    loss, grads = loss_and_grads(den)
    den.net.compile()
    loss_c, grads_c = loss_and_grads(den)
    assert den.net._compiled_call_impl is not None
    torch.testing.assert_close(loss_c, loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads_c, grads, rtol=1e-3, atol=1e-5)


# --- the flag and the fallback ------------------------------------------------------------------------


def tiny_run(out, **changes) -> tuple[TrainConfig, TensorData]:
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.rand(32, 1, 16, 16, generator=g) * 2 - 1, torch.arange(32) % 10, 10, "fake")
    cfg = TrainConfig(data="fake", net=dict(SMALL), max_train_steps=2, batch_size=8, bf16=False, out=str(out),
                      sample_every=0, checkpoint_every=100, num_samples=4, sample_steps=2, warmup_steps=1)
    return cfg.updated(**changes), data


def test_compile_flag_on_the_command_line():
    import argparse

    from undiffuse.cli_flags import add_train_parser

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["train", "--no-compile"]).compile is False
    assert parser.parse_args(["train", "--compile"]).compile is True
    assert parser.parse_args(["train"]).compile is None  # the preset's value (TrainConfig.compile)


def test_no_compile_trains_eagerly(tmp_path):
    cfg, data = tiny_run(tmp_path, compile=False)
    trainer = Trainer(cfg, data=data)
    assert trainer.denoiser.net._compiled_call_impl is None
    assert all(torch.isfinite(torch.tensor(trainer.train_step())))


def test_compile_that_cannot_start_warns_and_trains(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no inductor here")

    monkeypatch.setattr(torch, "compile", broken)
    cfg, data = tiny_run(tmp_path, compile=True)
    with pytest.warns(RuntimeWarning, match="--no-compile"):
        trainer = Trainer(cfg, data=data)
    trainer.fit(progress=False)
    assert trainer.step == 2 and trainer.denoiser.net._compiled_call_impl is None


def test_compile_failing_at_the_first_step_warns_and_redoes_it_eagerly(tmp_path, monkeypatch):
    eager_cfg, data = tiny_run(tmp_path / "eager")
    eager = Trainer(eager_cfg, data=data)
    expected = [eager.train_step()[0] for _ in range(2)]

    def fails_when_called(*args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("inductor: C compiler failed")
        return call

    monkeypatch.setattr(torch, "compile", fails_when_called)
    cfg, _ = tiny_run(tmp_path / "compiled", compile=True)
    trainer = Trainer(cfg, data=data)
    with pytest.warns(RuntimeWarning, match="training eagerly"):
        losses = [trainer._step_or_fall_back()[0] for _ in range(2)]
    assert losses == expected  # the failed step's random numbers were replayed exactly


def test_sampling_compile_failure_warns_and_samples(monkeypatch):
    def fails_when_called(*args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("inductor: C compiler failed")
        return call

    monkeypatch.setattr(torch, "compile", fails_when_called)
    pipe = Pipeline(small_denoiser(), (1, 16, 16), num_classes=10)
    eager = pipe.sample(2, num_inference_steps=3, class_labels=[1, 2], guidance=2.0)
    with pytest.warns(RuntimeWarning, match="sampling eagerly"):
        x = pipe.sample(2, num_inference_steps=3, class_labels=[1, 2], guidance=2.0, compile=True)
    torch.testing.assert_close(x, eager)


def test_chunked_attention_gradients_are_contiguous_for_strided_views():
    """q, k, v as strided views of one fused qkv tensor (as AttentionBlock makes them): the backward
    writes contiguous gradients (bf16 bmm into a strided out= falls back to a reference kernel ~1000x
    slower on the CPU), and they equal the gradients of contiguous copies."""
    from undiffuse.nets.attention import chunked_attention

    qkv = torch.randn(2, 3, 8, 4, 2, 64, generator=torch.Generator().manual_seed(0)).bfloat16()
    fused = qkv.permute(1, 0, 2, 3, 5, 4).reshape(3, 2, 8 * 4, 64, 2)[..., 0]  # strided views
    grads = []
    for make in (lambda t: t, lambda t: t.contiguous()):
        q, k, v = (make(t).detach().requires_grad_() for t in fused)
        chunked_attention(q, k, v).float().square().sum().backward()
        grads.append([t.grad for t in (q, k, v)])
    assert not fused[0].is_contiguous()
    for g_strided, g_plain in zip(*grads):
        assert g_strided.is_contiguous()
        torch.testing.assert_close(g_strided, g_plain)  # same kernels on the same values
