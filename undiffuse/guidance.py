"""Guidance as denoiser wrappers: anything that takes a denoiser and returns one fits every sampler."""
from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Prediction
from .processes.gaussian import bcast


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6, in the "w = 1 is conditional" form):

        eps = eps_u + w (eps_c - eps_u),

    with the conditional and unconditional passes batched into one network call. Because x0_hat
    is affine in eps_hat at fixed (x_t, t), guiding x0 is the same update.

    Args:
        denoiser: a conditional denoiser trained with label dropout to ``null_cond``.
        scale: w; 1 is the plain conditional model, 0 the unconditional one.
        null_cond: the "no condition" label (the null class index, num_classes).
        rescale: guidance rescale phi (Lin et al. 2023, eq. 15-16): match the guided x0's per-sample
            std to the conditional one's and blend by phi; 0 disables it.
        interval: (sigma_lo, sigma_hi): guide only where sigma/alpha lies in this range
            (Kynkäänniemi et al. 2024); elsewhere use the conditional prediction.
    """

    def __init__(self, denoiser, scale: float, null_cond: int | Tensor, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None):
        self.denoiser, self.scale, self.null_cond = denoiser, float(scale), null_cond
        self.rescale, self.interval = float(rescale), interval
        self.process = denoiser.process

    def __call__(self, xt: Tensor, t: Tensor, cond: Tensor | None = None) -> Prediction:
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition (class labels)")
        if self.scale == 1.0:
            return self.denoiser(xt, t, cond)
        b = xt.shape[0]
        null = torch.as_tensor(self.null_cond, device=cond.device, dtype=cond.dtype).expand_as(cond)
        t_b = torch.as_tensor(t, dtype=torch.float64).expand(b)
        both = self.denoiser(torch.cat([xt, xt]), torch.cat([t_b, t_b]), torch.cat([cond, null]))
        x0_c, x0_u = both.x0[:b], both.x0[b:]
        x0 = x0_u + self.scale * (x0_c - x0_u)
        a, s = self.process.alpha_sigma(t_b)
        if self.rescale > 0:
            dims = tuple(range(1, xt.ndim))
            ratio = x0_c.std(dim=dims, keepdim=True) / x0.std(dim=dims, keepdim=True).clamp_min(1e-8)
            x0 = self.rescale * (x0 * ratio) + (1 - self.rescale) * x0
        if self.interval is not None:
            level = s / a
            inside = (level >= self.interval[0]) & (level <= self.interval[1])
            x0 = torch.where(bcast(inside, xt).bool(), x0, x0_c)  # bcast casts to x.dtype
        eps = (xt - bcast(a, xt) * x0) / bcast(s, xt)
        return Prediction(x0, eps)
