"""Embeddings of the noise level (and class, or caption) that condition every denoiser.

The caller chooses what the noise label is (``1000 * t`` for DDPM, ``log(sigma) / 4`` for EDM,
...); the networks only embed it sinusoidally, as the Transformer embeds positions (Vaswani et al.
2017) and as DDPM (Ho et al. 2020, appendix B) and ADM (Dhariwal & Nichol 2021) embed timesteps.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import zero_init

__all__ = ["timestep_embedding", "batch_noise_labels", "TimeEmbedding", "ClassEmbedding", "TextConditioning"]


def timestep_embedding(noise_label: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of a (B,) noise label: a float32 (B, dim) tensor.

    Follows ADM's ``timestep_embedding``: frequency ``i`` is ``max_period ** (-i / half)`` for
    ``i < half = dim // 2``; the first half holds the cosines, the second the sines, and an odd
    ``dim`` gets one zero column. Computed in float32 whatever the label dtype (float64 labels from
    the samplers, or bf16 under autocast), because labels like ``1000 * t`` need the precision.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=noise_label.device) / half
    )
    args = noise_label.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def batch_noise_labels(noise_label: Tensor | float, batch: int, device: torch.device) -> Tensor:
    """Shape a scalar, (1,) or (B,) noise label to (B,) float32 on ``device``.

    Samplers often hold a single time for the whole batch; accepting it here saves every caller
    an ``expand``.
    """
    label = torch.as_tensor(noise_label, device=device).to(torch.float32).reshape(-1)
    return label.expand(batch)


class TimeEmbedding(nn.Module):
    """sinusoid(channels) -> Linear -> SiLU -> Linear(emb_dim): the DDPM/ADM ``temb`` MLP.

    ``emb_dim`` defaults to ``4 * channels`` as in both papers. The last Linear is not followed by
    a nonlinearity: each block that consumes the embedding begins its projection with SiLU.
    """

    def __init__(self, channels: int, emb_dim: int | None = None) -> None:
        super().__init__()
        emb_dim = emb_dim or 4 * channels
        self.channels = channels
        self.fc1 = nn.Linear(channels, emb_dim)
        self.fc2 = nn.Linear(emb_dim, emb_dim)

    def forward(self, noise_label: Tensor) -> Tensor:
        emb = timestep_embedding(noise_label, self.channels)
        return self.fc2(F.silu(self.fc1(emb)))


class ClassEmbedding(nn.Module):
    """Learned class embedding with one extra "null" row for classifier-free guidance.

    Row ``num_classes`` is the unconditional class (Ho & Salimans 2022): training drops labels to
    it, and ``class_labels=None`` means it. A net built without classes rejects labels.
    """

    def __init__(self, num_classes: int | None, emb_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None

    def forward(self, class_labels: Tensor | None, batch: int, device: torch.device) -> Tensor | None:
        """The (B, emb_dim) embedding to add to the time embedding, or None for an unconditional net."""
        if self.table is None:
            if class_labels is not None:
                raise ValueError("class_labels were given, but this net was built without num_classes")
            return None
        if class_labels is None:
            class_labels = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        return self.table(class_labels.long())


class TextConditioning(nn.Module):
    """What a text-conditional U-Net takes from a caption's embedding.

    * the pooled (sentence) embedding, LayerNorm-ed and projected to ``emb_dim``, to add to the noise
      embedding, in place of a class embedding (GLIDE, Nichol et al. 2022, sec. 2.3; Imagen,
      Saharia et al. 2022, sec. 2.2). The projection starts at zero, so a fresh text net computes
      exactly what the same net without text would;
    * the token embeddings, LayerNorm-ed once here for every cross-attention block (Imagen, sec. 2.2:
      "Layer Normalization to text embeddings in the attention and pooling layers"), with their
      padding mask. LayerNorm acts per token, so padding cannot leak into real tokens.

    The encoder itself stays frozen and outside the net: the net sees only its embeddings.
    """

    def __init__(self, context_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.context_dim = context_dim
        self.token_norm = nn.LayerNorm(context_dim)
        self.pooled_norm = nn.LayerNorm(context_dim)
        self.pooled_proj = zero_init(nn.Linear(context_dim, emb_dim))

    def forward(self, text, batch: int) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """(pooled embedding (B, emb_dim), (normalised tokens (B, L, D), mask (B, L) bool))."""
        tokens, mask, pooled = text.tokens, text.mask, text.pooled
        if tokens.ndim != 3 or tokens.shape[-1] != self.context_dim or tokens.shape[0] != batch \
                or mask.shape != tokens.shape[:2] or pooled.shape != (batch, self.context_dim):
            raise ValueError(f"text embedding shapes tokens {tuple(tokens.shape)}, mask {tuple(mask.shape)}, "
                             f"pooled {tuple(pooled.shape)} do not fit this net: expected ({batch}, L, "
                             f"{self.context_dim}), ({batch}, L), ({batch}, {self.context_dim}); "
                             "was the net built with another encoder's context_dim?")
        return self.pooled_proj(self.pooled_norm(pooled)), (self.token_norm(tokens), mask.bool())
