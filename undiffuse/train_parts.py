"""The pure functions of the training loop (``undiffuse.train`` re-exports them): the network
built for the data, the EMA update, the learning-rate schedule, the batch order and the per-rank
dropout seeds."""
from __future__ import annotations

import math

import torch

from .config import TrainConfig
from .data import TensorData
from .denoiser import Denoiser
from .nets import build_net
from .processes import make_process


def build_denoiser(cfg: TrainConfig, data: TensorData, context_dim: int | None = None) -> Denoiser:
    """The network sized to the data, wrapped with the configured process and parameterization;
    ``context_dim`` (the text encoder's width) makes it text-conditional instead of class-conditional."""
    images = data.x.ndim == 4
    text = context_dim is not None
    num_classes = data.num_classes if (cfg.class_conditional and data.labels is not None and not text) else None
    out_mult = 2 if cfg.learn_variance else 1
    if images:
        c, size = data.x.shape[1], data.x.shape[-1]
        net = build_net(cfg.net, in_channels=c, out_channels=out_mult * c, image_size=size,
                        num_classes=num_classes, **({"context_dim": context_dim} if text else {}))
    else:
        d = data.x.shape[1]
        net = build_net(cfg.net, dim=d, out_dim=out_mult * d, num_classes=num_classes)
    return Denoiser(net, make_process(cfg.process), cfg.prediction,
                    learn_variance=cfg.learn_variance, clip_x0=cfg.clip_x0 if images else None)


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, decay: float) -> None:
    """EMA with warm-up: decay_k = min(decay, (1 + k) / (10 + k)) (as in Song et al. 2021's code
    and diffusers' EMAModel), so early averages are not dominated by the random init."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to 0 at cfg.max_train_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        frac = (step - cfg.warmup_steps) / max(1, cfg.max_train_steps - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return cfg.lr


def _rank_seed(seed: int, step: int, rank: int) -> int:
    """The global-RNG seed of process ``rank`` > 0 at ``step`` (see ``Trainer.train_step``)."""
    return ((seed * 1_000_003 + step) * 1_000_033 + rank) % 2**63


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The indices of batch ``step``: epochs are seeded permutations, last partial batch dropped."""
    per_epoch = max(1, n // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size:(k + 1) * batch_size]
