"""Attention over the pixels of a feature map: self-attention, and cross-attention to a caption.

Both are residual, pre-normalised with GroupNorm and closed by a zero-initialised 1x1 projection,
so a fresh block is the identity (ADM, Dhariwal & Nichol 2021). Heads have ``head_dim`` channels.

Cross-attention is how the U-Nets of latent diffusion (Rombach et al. 2022, sec. 3.3) and Imagen
(Saharia et al. 2022, sec. 2.2) read a text encoder's token embeddings: the queries come from the
image features, the keys and values from the tokens, ``softmax(Q K^T / sqrt(d)) V``. GLIDE (Nichol
et al. 2022) instead appends the projected tokens to every self-attention's keys; the separate
block costs the same and leaves unconditional nets untouched.

Every tensor is reshaped (never ``view``-ed) so channels_last inputs work. Self-attention goes
through ``attend``, which picks the kernel by measurement (docs/speed.md): on the CPU in bf16 a
matmul-softmax over cache-sized chunks (``chunked_attention``), 2.3-2.6x faster than SDPA's CPU
flash kernel in forward + backward at head dims 8-64; everywhere else (fp32, CUDA)
``scaled_dot_product_attention``, on the CPU given contiguous q, k, v. Cross-attention (short captions, a padding mask) always
uses SDPA.

Cross-attention can add fixed 2D Fourier features of each pixel's position to its queries
(``position_features``): without them a query knows where it is only through the convolutions'
zero padding, so a caption's "at the top left" has to be learnt from border effects (measured in
docs/text.md: position was the attribute a small model learnt last). DiT and ViT give every
token such an embedding; here only the queries get it, so "where am I" can select what to read.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["group_norm", "zero_init", "num_heads", "AttentionBlock", "CrossAttentionBlock", "position_features",
           "ATTENTION_BACKENDS", "attend", "attention_backend", "chunked_attention"]

#: "auto": chunked on the CPU in bf16, else SDPA; "sdpa": always SDPA (torch picks its kernel);
#: "chunked": always the chunked path (any device and dtype).
ATTENTION_BACKENDS = ("auto", "sdpa", "chunked")
_backend = "auto"

#: Score elements per chunk: 2 MB in bf16 stays in L2, and stays far below glibc's 32 MB mmap
#: threshold, so no chunk pays the page faults that a whole (B*heads, N, N) score tensor does.
CHUNK_ELEMENTS = 1 << 20


@contextmanager
def attention_backend(name: str):
    """Use attention backend ``name`` (``ATTENTION_BACKENDS``) inside the block (benchmarks, tests)."""
    global _backend
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {ATTENTION_BACKENDS}")
    previous, _backend = _backend, name
    try:
        yield
    finally:
        _backend = previous


def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q k^T / sqrt(d)) v over (B, heads, N, d) tensors, by the configured backend."""
    if _backend == "sdpa" or (_backend == "auto" and not (q.device.type == "cpu" and q.dtype == torch.bfloat16)):
        if q.device.type == "cpu":
            # The q, k, v views of a fused qkv conv are strided; SDPA's CPU kernel runs 3.5x
            # faster on contiguous copies (fp32, head dim 8 at 16x16, docs/speed.md).
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        return F.scaled_dot_product_attention(q, k, v)
    if torch.compiler.is_compiling():
        # Under torch.compile: plain ops, which inductor fuses and memory-plans itself, rather
        # than a Python chunk loop inside an autograd.Function for it to trace.
        return torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2), -1) @ v
    return chunked_attention(q, k, v)


def chunked_attention(q: Tensor, k: Tensor, v: Tensor, recompute: bool = False) -> Tensor:
    """Exact attention in chunks of (batch x head) slices small enough to stay in cache.

    Backward reuses the probabilities kept from forward (``recompute=False``: faster, one bf16
    score matrix per layer in memory, in 2 MB pieces) or recomputes them from q, k, v as flash
    attention does (``recompute=True``: no score memory).
    """
    return _ChunkedAttention.apply(q, k, v, recompute)


def _slices(n: int, rows: int, cols: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // (rows * cols))
    return [slice(i, i + step) for i in range(0, n, step)]


class _ChunkedAttention(torch.autograd.Function):
    # Full score rows per chunk (N up to a few thousand here), so no online softmax is needed:
    # plain bmm in the input dtype (bf16 accumulates in fp32) and softmax (fp32 inside). The
    # 1/sqrt(d) scale is applied to q (N x d), not to the N x N scores: one pass less over them.

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, recompute: bool) -> Tensor:
        shape = q.shape
        q3, k3, v3 = (t.reshape(-1, *t.shape[-2:]) for t in (q, k, v))
        q3 = q3 * shape[-1] ** -0.5
        out = q3.new_empty(*q3.shape[:-1], v3.shape[-1])
        keep = not recompute and any(ctx.needs_input_grad[:3])
        probs = []
        with torch.autocast(q.device.type, enabled=False):  # q, k, v arrive in the dtype to use
            for sl in _slices(len(q3), q3.shape[1], k3.shape[1]):
                p = torch.softmax(torch.bmm(q3[sl], k3[sl].transpose(1, 2)), -1)
                torch.bmm(p, v3[sl], out=out[sl])
                if keep:
                    probs.append(p)
        ctx.save_for_backward(q3, k3, v3)
        ctx.shape, ctx.probs = shape, probs
        return out.reshape(*shape[:-1], v.shape[-1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        q3, k3, v3 = ctx.saved_tensors
        probs, ctx.probs = ctx.probs, None
        g3 = grad.reshape(-1, *grad.shape[-2:]).to(q3.dtype)
        # Contiguous outputs: q, k, v are often strided views of one fused qkv tensor, which
        # empty_like would copy, and bmm in bf16 into a strided out= takes a reference kernel
        # ~1000x slower than into a contiguous one (torch 2.13 CPU; fp32 is unaffected).
        dq, dk, dv = (torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q3, k3, v3))
        with torch.autocast(q3.device.type, enabled=False):
            for i, sl in enumerate(_slices(len(q3), q3.shape[1], k3.shape[1])):
                p = probs[i] if probs else torch.softmax(torch.bmm(q3[sl], k3[sl].transpose(1, 2)), -1)
                torch.bmm(p.transpose(1, 2), g3[sl], out=dv[sl])
                dp = torch.bmm(g3[sl], v3[sl].transpose(1, 2))
                ds = torch.ops.aten._softmax_backward_data(dp, p, -1, p.dtype)
                torch.bmm(ds, k3[sl], out=dq[sl])
                torch.bmm(ds.transpose(1, 2), q3[sl], out=dk[sl])  # q3 carries the scale already
        shape = ctx.shape
        dq.mul_(shape[-1] ** -0.5)
        return dq.reshape(shape), dk.reshape(shape), dv.reshape(*shape[:-1], v3.shape[-1]), None


def group_norm(channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= ``num_groups`` that divides ``channels``.

    DDPM uses 32 groups; small test nets (16 or 48 channels) need fewer to stay valid.
    """
    return nn.GroupNorm(math.gcd(num_groups, channels), channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so the residual branch it closes starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def num_heads(channels: int, head_dim: int) -> int:
    """``channels // head_dim`` heads (at least one), reduced until it divides ``channels``;
    DDPM's single head is ``head_dim >= channels``."""
    heads = max(1, channels // head_dim)
    while channels % heads:
        heads -= 1
    return heads


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over the pixels of a feature map (DDPM, ADM)."""

    def __init__(self, channels: int, head_dim: int = 64, num_groups: int = 32) -> None:
        super().__init__()
        self.num_heads = num_heads(channels, head_dim)
        self.norm = group_norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, head_dim)
        out = attend(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def position_features(channels: int, height: int, width: int, device=None) -> Tensor:
    """Fixed 2D Fourier features of pixel positions, (channels, height, width), values in [-1, 1].

    Each pixel centre has coordinates ``u`` in (-1, 1) across the map, so the lowest frequency
    gives the same place of the image the same value at every resolution. For K = channels // 4
    frequencies ``omega_k``, geometric from pi/2 (half a period across the map: one monotonic
    ramp) to pi n / 2 (a period of two pixels), the channels are sin and cos of ``omega_k u_y``,
    then of ``omega_k u_x`` (Fourier features, Tancik et al. 2020; the sin-cos 2D embedding of
    ViT/MAE with frequencies set by the map size); channels beyond 4K are zero.
    """
    k = channels // 4
    out = torch.zeros(channels, height, width, device=device)
    if k == 0:
        return out
    for i, n in enumerate((height, width)):
        u = (torch.arange(n, device=device) + 0.5) * (2 / n) - 1
        omega = (math.pi / 2) * torch.logspace(0, math.log10(max(n, 2)), k, device=device)
        angle = omega[:, None] * u[None, :]  # (K, n)
        feats = torch.cat([angle.sin(), angle.cos()])  # (2K, n)
        out[2 * k * i:2 * k * (i + 1)] = feats[:, :, None] if i == 0 else feats[:, None, :]
    return out


class CrossAttentionBlock(nn.Module):
    """Residual multi-head attention from the pixels (queries) to a caption's tokens (keys, values).

    ``tokens`` (B, L, context_dim) and ``mask`` (B, L) bool, True for a real token: padding gets
    exactly zero attention weight through the boolean ``attn_mask`` (masked scores are -inf before
    the softmax), so whatever sits in padded positions cannot change the output. A caption with no
    real token at all contributes nothing (the block is the identity for that row) instead of the
    NaN a softmax over no keys would give.

    With ``positions`` the queries also see ``position_features`` of their pixel (added to the
    normalised features before the query projection; no parameters).
    """

    def __init__(self, channels: int, context_dim: int, head_dim: int = 64, num_groups: int = 32,
                 positions: bool = False) -> None:
        super().__init__()
        self.positions = positions
        self.num_heads = num_heads(channels, head_dim)
        self.norm = group_norm(channels, num_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Linear(context_dim, 2 * channels)  # LDM's to_k and to_v, fused
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor, tokens: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        heads, d = self.num_heads, c // self.num_heads
        feats = self.norm(x)
        if self.positions:
            feats = feats + position_features(c, h, w, x.device).to(feats.dtype)
        q = self.q(feats).reshape(b, heads, d, h * w).transpose(-1, -2)  # (B, heads, HW, d)
        k, v = self.kv(tokens).reshape(b, tokens.shape[1], 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        has_tokens = mask.any(dim=-1)
        allowed = (mask | ~has_tokens[:, None])[:, None, None, :]  # (B, 1, 1, L), broadcast over heads
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        out = self.proj(out.transpose(-1, -2).reshape(b, c, h, w))
        return x + out * has_tokens[:, None, None, None].to(out.dtype)
