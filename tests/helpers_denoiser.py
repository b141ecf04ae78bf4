"""Shared by test_denoiser.py and test_losses.py: per-sample levels, the papers' exact training
targets (Karras et al. 2022 Table 1, Salimans & Ho 2022) and a dummy net that returns them."""
from __future__ import annotations

import torch
from torch import nn

F64 = torch.float64
SHAPE = (5, 2, 3, 3)  # image-shaped, to exercise per-sample broadcasting
T = torch.tensor([0.02, 0.3, 0.55, 0.9, 1.0], dtype=F64)  # one level per sample


def gen(seed):
    return torch.Generator().manual_seed(seed)


def col(v, like=SHAPE):
    return v.reshape(-1, *([1] * (len(like) - 1)))


def edm_coefficients(s, sd):
    """Karras et al. 2022, Table 1 (in the scaled variables: s = sigma / alpha)."""
    return (sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt(), 1 / (s**2 + sd**2).sqrt(),
            torch.log(s) / 4)


def exact_target(prediction, x0, eps, alpha, sigma, sigma_data=0.5):
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    s = sigma / alpha
    c_skip, c_out, _, _ = edm_coefficients(s, sigma_data)
    x_scaled = x0 + s * eps  # = xt / alpha
    return (x0 - c_skip * x_scaled) / c_out


class TargetNet(nn.Module):
    """Returns a fixed tensor (optionally with a learned-variance half) and records its inputs."""

    def __init__(self, out, var=None):
        super().__init__()
        self.out, self.var, self.seen = out, var, []

    def forward(self, x, noise_label, cond=None):
        self.seen.append((x.detach().clone(), noise_label.detach().clone(), cond))
        return self.out if self.var is None else torch.cat([self.out, self.var], dim=1)


def _setup(process, seed=3):
    g = gen(seed)
    x0 = torch.randn(SHAPE, generator=g, dtype=F64)
    eps = torch.randn(SHAPE, generator=g, dtype=F64)
    a, s = process.alpha_sigma(T)
    alpha, sigma = col(a), col(s)
    return x0, eps, alpha, sigma, alpha * x0 + sigma * eps
