"""A small noise-conditioned MLP denoiser for low-dimensional toy data (2-D mixtures, spirals).

Residual MLP blocks, each receiving the noise (and class) embedding, in the same way as the
U-Net's blocks do (Ho et al. 2020; Dhariwal & Nichol 2021), so that toy experiments exercise the
same training and sampling code as the image models, only faster.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .embeddings import ClassEmbedding, TimeEmbedding, batch_noise_labels

__all__ = ["MLPDenoiser", "MLPBlock"]


class MLPBlock(nn.Module):
    """``h + fc2(SiLU(fc1(SiLU(norm(h))) + proj(emb)))``: a pre-norm residual block.

    ``emb`` arrives already passed through SiLU, as in the U-Net.
    """

    def __init__(self, hidden: int, emb_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        z = self.fc1(F.silu(self.norm(h))) + self.emb_proj(emb)
        return h + self.fc2(F.silu(z))


class MLPDenoiser(nn.Module):
    """``net(x, noise_label, class_labels=None)`` on (B, dim) data -> (B, out_dim).

    ``out_dim`` defaults to ``dim`` (pass ``2 * dim`` for a learned variance). The output layer
    starts at zero, so a fresh net predicts the mean of the noise. Classes work as in the U-Net:
    ``class_labels`` in ``[0, num_classes]``, ``num_classes`` (or None) being the null class.
    """

    def __init__(self, dim: int = 2, hidden: int = 256, num_blocks: int = 4, num_classes: int | None = None,
                 out_dim: int | None = None) -> None:
        super().__init__()
        out_dim = out_dim or dim
        self.config = dict(dim=dim, hidden=hidden, num_blocks=num_blocks, num_classes=num_classes, out_dim=out_dim)
        self.dim, self.out_dim, self.num_classes = dim, out_dim, num_classes
        # The U-Net's ratio: a sinusoid a quarter as wide as the embedding.
        self.time_emb = TimeEmbedding(hidden // 4, hidden)
        self.class_emb = ClassEmbedding(num_classes, hidden)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList([MLPBlock(hidden, hidden) for _ in range(num_blocks)])
        self.norm_out = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, out_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, noise_label: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.time_emb(batch_noise_labels(noise_label, x.shape[0], x.device))
        class_emb = self.class_emb(class_labels, x.shape[0], x.device)
        if class_emb is not None:
            emb = emb + class_emb
        emb = F.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.norm_out(h)))
