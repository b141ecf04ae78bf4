"""Training objectives for Gaussian diffusion.

``diffusion_loss`` draws levels t and noise, corrupts x0 and regresses the network's own target
(eps, x0, v or EDM's F) with an L2 or L1 penalty (Ho et al. 2020, eq. 14, "L_simple"; the L1
variant as in Saharia et al. 2022 / Bansal et al. 2022), weighted per level:

* "uniform": every level alike in the target's own space (for "edm" this is EDM's lambda(sigma),
  Karras et al. 2022, eq. 8 and Table 1, which makes the F-space loss uniform);
* "min_snr": Min-SNR-gamma (Hang et al. 2023, eq. 9-10): the x0-space weight min(SNR, gamma),
  expressed in the target's space (÷SNR for eps, ÷(SNR + 1) for v).

With a learned variance the hybrid objective L_simple + lambda L_vlb (Nichol & Dhariwal 2021,
sec. 3.1, lambda = 0.001) trains the variance through the VLB term while the mean sees only
L_simple (the stop-gradient on the mean).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .denoiser import Denoiser, Prediction, v_from
from .preconditioning import EDMPrecond
from .processes.gaussian import DDPM, bcast
from .distributions import discretized_gaussian_log_likelihood, normal_kl

LOSSES = ("l2", "l1")
WEIGHTINGS = ("uniform", "min_snr")


def diffusion_loss(denoiser: Denoiser, x0: Tensor, cond: Tensor | None = None, *,
                   loss: str = "l2", weighting: str = "uniform", snr_gamma: float = 5.0,
                   vlb_weight: float = 1e-3, generator: torch.Generator | None = None,
                   t: Tensor | None = None, noise: Tensor | None = None,
                   forward: Callable[..., Prediction] | None = None) -> Tensor:
    """Per-sample loss, shape (B,). ``t`` and ``noise`` may be given (tests, or the trainer's
    share of a global batch drawn on every process); else drawn. ``forward`` runs the network in
    place of ``denoiser`` (its DistributedDataParallel wrapper, which syncs the gradients)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; choose one of {WEIGHTINGS}")
    process = denoiser.process
    b = x0.shape[0]
    if t is None:
        t = process.sample_t(b, generator, device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = process.corrupt(x0, t, noise)
    pred = (denoiser if forward is None else forward)(xt, t, cond)
    a, s = process.alpha_sigma(t)
    snr = (a / s) ** 2
    residual, weight = _residual_and_weight(denoiser.prediction, pred, x0, noise, a, s, snr,
                                            weighting, snr_gamma, denoiser.sigma_data)
    penalty = residual.square() if loss == "l2" else residual.abs()
    out = weight.to(x0.dtype) * penalty.flatten(1).mean(1)
    if denoiser.learn_variance:
        out = out + vlb_weight * vlb_term(denoiser, pred, x0, xt, t)
    return out


def _residual_and_weight(prediction: str, pred: Prediction, x0: Tensor, noise: Tensor, a: Tensor,
                         s: Tensor, snr: Tensor, weighting: str, gamma: float,
                         sigma_data: float = 0.5) -> tuple[Tensor, Tensor]:
    alpha, sigma = bcast(a, x0), bcast(s, x0)
    clipped = snr.clamp(max=gamma) if weighting == "min_snr" else None
    if prediction == "eps":
        return pred.eps - noise, (clipped / snr if clipped is not None else torch.ones_like(snr))
    if prediction == "x0":
        return pred.x0 - x0, (clipped if clipped is not None else torch.ones_like(snr))
    if prediction == "v":
        v_hat = v_from(pred.x0, pred.eps, alpha, sigma)
        return v_hat - v_from(x0, noise, alpha, sigma), (
            clipped / (snr + 1) if clipped is not None else torch.ones_like(snr))
    if weighting == "min_snr":
        raise ValueError("min_snr weighting is not defined for EDM preconditioning; use 'uniform' "
                         "(EDM's own lambda(sigma))")
    # EDM: regress F itself, F_hat - F = (x0_hat - x0) / c_out with c_out = s sd / sqrt(s^2 + sd^2),
    # s = sigma / alpha and sd the denoiser's sigma_data. For L2 this is the x0-space error weighted
    # by lambda(sigma) = 1 / c_out^2 (Karras et al. 2022, eq. 8); unlike that weight it also keeps
    # L1 uniform in F-space.
    return (pred.x0 - x0) / EDMPrecond(sigma_data).c_out(bcast(s / a, x0)), torch.ones_like(snr)


def vlb_term(denoiser: Denoiser, pred: Prediction, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
    """L_{t-1} = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) in bits/dim, with the mean detached
    (Nichol & Dhariwal 2021, sec. 3.1); at the first step the discretized decoder NLL L_0."""
    from .samplers.ancestral import reverse_step  # local: samplers import the denoiser too

    process = denoiser.process
    if not isinstance(process, DDPM):
        raise ValueError("a learned variance is defined for discrete DDPM processes only")
    s = (t - 1.0 / process.num_steps).clamp_min(0)
    frozen = Prediction(pred.x0.detach(), pred.eps.detach(), pred.var_interp)
    mean, log_var = reverse_step(process, frozen, xt, t, s, "learned")
    true_mean, true_var = process.posterior(x0, xt, t, s)
    kl = normal_kl(true_mean, bcast(torch.log(true_var.clamp_min(1e-20)), x0), mean, log_var)
    nll = -discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
    first = bcast(s == 0, x0).bool()  # bcast casts to x0's dtype; torch.where needs a bool mask
    per_dim = torch.where(first, nll, kl)
    return per_dim.flatten(1).mean(1) / torch.log(torch.tensor(2.0))
