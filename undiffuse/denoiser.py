"""A network wrapped with a parameterization: ``denoiser(xt, t, cond) -> Prediction(x0, eps)``.

Every sampler, loss and metric talks to a ``Denoiser`` (or anything with the same call, such as
the exact Gaussian-mixture oracle in ``undiffuse.testing``), never to a raw network, so any
parameterization fits any sampler. Conversions follow docs/conventions.md:

* eps: ``x0 = (xt - sigma eps) / alpha`` (Ho et al. 2020, eq. 15);
* x0:  ``eps = (xt - alpha x0) / sigma``;
* v:   ``v = alpha eps - sigma x0`` (Salimans & Ho 2022, sec. 4), so
  ``x0 = (alpha xt - sigma v) / (alpha^2 + sigma^2)`` and ``eps = (sigma xt + alpha v) / (alpha^2 + sigma^2)``
  (for VP the denominators are 1);
* edm: ``x0 = c_skip x~ + c_out F(c_in x~, c_noise)`` in the scaled variables ``x~ = xt / alpha``,
  ``s = sigma / alpha`` (Karras et al. 2022, eq. 7 and Table 1: ``preconditioning.EDMPrecond``).

The network's time input for eps / x0 / v is ``preconditioning.noise_label(process, t)``, and for edm
the EDM row's c_noise: both defined once, in ``undiffuse/preconditioning.py``.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .preconditioning import EDMPrecond, noise_label
from .processes.gaussian import GaussianProcess, bcast

PARAMETERIZATIONS = ("eps", "x0", "v", "edm")


class Prediction(NamedTuple):
    x0: Tensor
    eps: Tensor
    #: Learned-variance output v in [-1, 1] (Nichol & Dhariwal 2021, eq. 15), else None.
    var_interp: Tensor | None = None


def eps_from_x0(xt: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (xt - alpha * x0) / sigma


def x0_from_eps(xt: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (xt - sigma * eps) / alpha


def v_from(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return alpha * eps - sigma * x0


def x0_eps_from_v(xt: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    norm = alpha**2 + sigma**2
    return (alpha * xt - sigma * v) / norm, (sigma * xt + alpha * v) / norm


def score_from_eps(eps: Tensor, sigma: Tensor) -> Tensor:
    """grad_x log p_t(x) = -eps / sigma (Song et al. 2021, via Tweedie's formula)."""
    return -eps / sigma


class Denoiser(nn.Module):
    """Wraps ``net(x, noise_label, cond)`` with a parameterization.

    ``cond`` goes to the network untouched: None, class labels (B,), or a text embedding
    (``undiffuse.text.TextEmbedding``) for a net built with ``context_dim``.

    Args:
        net: the network; its output has C channels (2C with ``learn_variance``).
        process: the Gaussian forward process the network is trained on.
        prediction: what the network outputs: "eps", "x0", "v" or "edm" (preconditioned).
        sigma_data: data standard deviation for EDM preconditioning (0.5 for images in [-1, 1]).
        learn_variance: the network also outputs v for the reverse-step variance.
        clip_x0: clamp x0_hat to [-clip_x0, clip_x0] at sampling time (diffusers' clip_sample),
            and make eps consistent with the clamped x0; None disables it.
    """

    def __init__(self, net: nn.Module, process: GaussianProcess, prediction: str = "eps",
                 sigma_data: float = 0.5, learn_variance: bool = False, clip_x0: float | None = None):
        super().__init__()
        if prediction not in PARAMETERIZATIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {PARAMETERIZATIONS}")
        self.net, self.process, self.prediction = net, process, prediction
        self.sigma_data, self.learn_variance, self.clip_x0 = sigma_data, learn_variance, clip_x0
        self.precond = EDMPrecond(sigma_data) if prediction == "edm" else None

    def forward(self, xt: Tensor, t: Tensor, cond=None) -> Prediction:
        t = torch.as_tensor(t, dtype=torch.float64, device=xt.device).expand(xt.shape[0])
        a, s = self.process.alpha_sigma(t)
        alpha, sigma = bcast(a, xt), bcast(s, xt)
        if self.prediction == "edm":
            x0, eps, var = self._edm(xt, alpha, sigma, cond)
        else:
            # VP's c_in (Table 1) written in x_t: unit-variance input for any process, 1 for VP.
            c_in = (alpha**2 + sigma**2).rsqrt()
            out, var = self._run(c_in * xt, noise_label(self.process, t), cond)
            if self.prediction == "eps":
                eps, x0 = out, x0_from_eps(xt, out, alpha, sigma)
            elif self.prediction == "x0":
                x0, eps = out, eps_from_x0(xt, out, alpha, sigma)
            else:
                x0, eps = x0_eps_from_v(xt, out, alpha, sigma)
        if self.clip_x0 is not None and not self.training:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = eps_from_x0(xt, x0, alpha, sigma)
        return Prediction(x0, eps, var)

    def _edm(self, xt: Tensor, alpha: Tensor, sigma: Tensor, cond):
        """Karras et al. 2022, eq. 7 with Table 1's EDM row, in x~ = xt / alpha, s = sigma / alpha."""
        s, x_scaled, pre = sigma / alpha, xt / alpha, self.precond
        c_skip, c_out, c_in = pre.c_skip(s), pre.c_out(s), pre.c_in(s)
        out, var = self._run(c_in * x_scaled, pre.c_noise(s.flatten(1)[:, 0]), cond)
        x0 = c_skip * x_scaled + c_out * out
        return x0, (x_scaled - x0) / s, var

    def _run(self, x_in: Tensor, label: Tensor, cond):
        out = self.net(x_in, label.to(torch.float32), cond).to(x_in.dtype)
        if not self.learn_variance:
            return out, None
        mean_part, v = out.chunk(2, dim=1)
        return mean_part, v

    def config(self) -> dict:
        return {"prediction": self.prediction, "sigma_data": self.sigma_data,
                "learn_variance": self.learn_variance, "clip_x0": self.clip_x0}
