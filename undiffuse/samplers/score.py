"""The score-based view: annealed Langevin dynamics and predictor-corrector sampling.

The score of the noisy marginal is grad_x log q_t(x) = -eps_hat / sigma(t) (``score_from_eps``),
so any denoiser is a score model. Both samplers end, as the papers recommend, with one denoising
step: when ``ts`` ends at 0 the result is x0_hat at the last positive level (Song & Ermon 2020,
"Improved techniques", sec. 3.3; Song et al. 2021, appendix G "denoising").
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..denoiser import Prediction, score_from_eps
from ..processes.gaussian import bcast
from .ancestral import reverse_step
from .base import Callback, DenoiserLike, check_ts, noise_like, report, scaled

PREDICTORS = ("euler_maruyama", "ancestral", "none")


def _mean_norm(v: Tensor) -> Tensor:
    return v.flatten(1).norm(dim=1).mean()


@torch.no_grad()
def annealed_langevin(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                      generator: torch.Generator | None = None, callback: Callback | None = None,
                      n_steps_each: int = 5, step_size: float | None = None) -> Tensor:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each level t_i of ``ts`` (noisiest first) take ``n_steps_each`` Langevin steps
    x <- x + a_i / 2 score(x, t_i) + sqrt(a_i) z with a_i = step_size * sigma_i^2 / sigma_L^2,
    sigma_L the smallest level's sigma; then denoise. Network evaluations:
    n_steps_each * (len(ts) - 1), plus one for the final x0_hat when ``ts`` ends at 0.
    The paper's NCSN setting is step_size = 2e-5 with sigma_L = 0.01 and 100 steps at each of 10
    levels. The update is stable only for a_i < 2 sigma_i^2, i.e. step_size < 2 sigma_L^2, so the
    default (None) is the paper's ratio step_size = 0.2 sigma_L^2, for any process.
    """
    ts = check_ts(ts)
    levels = ts[ts > 0]
    process = denoiser.process
    sigma_last = process.sigma(levels[-1])
    if step_size is None:
        step_size = 0.2 * float(sigma_last**2)
    i = 0
    for t in levels:
        sigma = process.sigma(t)
        a = step_size * float(sigma**2 / sigma_last**2)
        for _ in range(n_steps_each):
            pred = denoiser(x, t, cond)
            report(callback, i, t, x, pred)
            x = x + (a / 2) * score_from_eps(pred.eps, float(sigma)) + a**0.5 * noise_like(x, generator)
            i += 1
    if float(ts[-1]) == 0:
        pred = denoiser(x, levels[-1], cond)
        report(callback, i, levels[-1], x, pred)
        return pred.x0
    return x


def langevin_corrector(denoiser: DenoiserLike, x: Tensor, t: Tensor, cond: Tensor | None,
                       generator: torch.Generator | None, snr: float, alpha: float) -> Tensor:
    """One Langevin corrector step at level t (Song et al. 2021, Algorithms 4 and 5): the step
    size eps = 2 alpha (snr ||z|| / ||score||)^2 fixes the signal-to-noise ratio of the update.
    The norms are averaged over the batch, as in the authors' code: per sample, a small ||score||
    near a mode gives huge steps in low dimension."""
    pred = denoiser(x, t, cond)
    score = score_from_eps(pred.eps, float(denoiser.process.sigma(t)))
    z = noise_like(x, generator)
    eps = float(2 * alpha * (snr * _mean_norm(z) / _mean_norm(score).clamp_min(1e-12)) ** 2)
    return x + eps * score + (2 * eps) ** 0.5 * z


@torch.no_grad()
def predictor_corrector(denoiser: DenoiserLike, x: Tensor, ts: Tensor, *, cond: Tensor | None = None,
                        generator: torch.Generator | None = None, callback: Callback | None = None,
                        predictor: str = "ancestral", corrector_steps: int = 1,
                        snr: float = 0.16) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithms 1-3).

    At each level: ``corrector_steps`` Langevin corrector steps at t (``langevin_corrector``), then
    a predictor step from t to the next level:
    * "ancestral" (default): DDPM's posterior step p(x_s | x_t) (Ho et al. 2020), exact for any
      step size when x0_hat is exact;
    * "euler_maruyama": the reverse SDE dx~ = -d[s^2] score~ + sqrt(d[s^2]) dW in the scaled
      variables, where every process is VE; for VE this is the paper's "reverse diffusion" predictor
      (Algorithm 2, line 3), and for small steps it equals "ancestral". It adds noise of std
      sqrt(s_t^2 - s^2) instead of the posterior's, so a step over orders of magnitude of s (the
      first step of a cosine schedule) leaves far too much noise: use it with many small steps;
    * "none": corrector only (Langevin at each level, as in annealed Langevin).
    The corrector's alpha is 1 for VE and alpha_{t|s}^2 = alpha_bar_t / alpha_bar_s for VP
    (Algorithm 5's alpha_i = 1 - beta_i). Defaults: snr = 0.16, one corrector step (the paper's
    CIFAR-10 VE setting). Network evaluations: (1 + corrector_steps) per level.
    """
    if predictor not in PREDICTORS:
        raise ValueError(f"unknown predictor {predictor!r}; choose one of {PREDICTORS}")
    ts = check_ts(ts)
    process = denoiser.process
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        alpha = 1.0 if process.kind == "ve" else float(process.transition(t, s)[0] ** 2)
        for _ in range(corrector_steps):
            x = langevin_corrector(denoiser, x, t, cond, generator, snr, alpha)
        pred = denoiser(x, t, cond)
        report(callback, i, t, x, pred)
        if float(s) == 0:
            return pred.x0
        x = _predict(process, predictor, x, t, s, pred, generator)
    return x


def _predict(process, predictor: str, x: Tensor, t: Tensor, s: Tensor, pred: Prediction,
             generator: torch.Generator | None) -> Tensor:
    if predictor == "none":
        return x
    if predictor == "ancestral":
        mean, log_var = reverse_step(process, pred, x, t, s)
        return mean + (0.5 * log_var).exp() * noise_like(x, generator)
    (a_t, s_t), (a_s, s_s) = scaled(process, t), scaled(process, s)
    d_var = float(s_t**2 - s_s**2)
    # x~ + d[s^2] score~ with score~ = -eps_hat / s in x~ = x / alpha
    x_scaled = x / bcast(a_t, x) - (d_var / float(s_t)) * pred.eps
    return bcast(a_s, x) * (x_scaled + d_var**0.5 * noise_like(x, generator))
