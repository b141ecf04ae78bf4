"""Gaussian KL and the discretized Gaussian decoder, for likelihood bounds (all in nats)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, e^log_var1) || N(mean2, e^log_var2)) per element."""
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1.0)


def _std_normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log p(x) per element for data on the 256-level grid of [-1, 1] (Ho et al. 2020, eq. 13):
    the Gaussian mass of the bin [x - 1/255, x + 1/255], with the edge bins extended to +-inf."""
    inv_std = torch.exp(-log_scale)
    centred = x - mean
    cdf_plus = _std_normal_cdf(inv_std * (centred + 1.0 / 255))
    cdf_minus = _std_normal_cdf(inv_std * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp_min(1e-12))
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp_min(1e-12))
    log_mid = torch.log((cdf_plus - cdf_minus).clamp_min(1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_minus, log_mid))
