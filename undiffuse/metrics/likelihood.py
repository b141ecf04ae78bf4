"""Likelihoods of Gaussian diffusion models: the discrete DDPM bound and the probability-flow ODE.

* ``vlb_bits_per_dim`` — the variational bound of a discrete DDPM (Ho et al. 2020, eq. 5), an upper
  bound on -log p(x0), estimated by Monte Carlo over x_n ~ q(x_n | x0).
* ``ode_log_likelihood`` — the exact log-density of the probability-flow ODE's model (Song et al.
  2021, Appendix D, eq. 39-40), with the divergence exact or by Hutchinson's estimator.
* ``dequantized_bits_per_dim`` — the ODE likelihood of uniformly dequantized 8-bit data, a bound on
  the discrete NLL in bits/dim comparable with the DDPM bound.

All log-densities are in nats on the [-1, 1] data scale unless a name says bits.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

from ..denoiser import Prediction
from ..distributions import discretized_gaussian_log_likelihood, normal_kl
from ..processes.gaussian import DDPM, GaussianProcess, bcast
from ..samplers.ancestral import reverse_step

__all__ = ["vlb_bits_per_dim", "ode_log_likelihood", "dequantized_bits_per_dim", "quantize_8bit",
           "bits_per_dim"]

F64 = torch.float64
HALF_BIN = 1.0 / 255  # half the spacing of the 256-level grid on [-1, 1]
EXACT_TRACE_MAX_DIM = 16


def quantize_8bit(x: Tensor) -> Tensor:
    """Round data in [-1, 1] to the 256-level grid k / 127.5 - 1 that the discretized decoder scores."""
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def _check_8bit(x: Tensor) -> None:
    k = (x.to(F64) + 1) * 127.5
    # float32 data on the grid is off by at most ~255 * 6e-8: 1e-3 separates that from real values.
    if x.abs().max() > 1 + 1e-6 or (k - k.round()).abs().max() > 1e-3:
        raise ValueError("data must lie on the 8-bit grid {k / 127.5 - 1 : k = 0..255} in [-1, 1]; "
                         "round it with quantize_8bit(x), or pass decoder='gaussian' for continuous data")


def bits_per_dim(nll: Tensor, dim: int) -> Tensor:
    """Nats per sample -> bits per dimension: nll / (D ln 2)."""
    return nll / (dim * math.log(2))


def _summary(nll: Tensor, dim: int) -> dict:
    """Per-sample NLL and bits/dim, with the batch mean and its standard error across samples."""
    bpd = bits_per_dim(nll, dim)
    stderr = float(bpd.std() / math.sqrt(len(bpd))) if len(bpd) > 1 else float("nan")
    return {"nll": nll, "bits_per_dim": bpd, "bpd_mean": float(bpd.mean()), "bpd_stderr": stderr, "dim": dim}


# --- the discrete variational bound ---------------------------------------------------------------

def _prior_kl(process: DDPM, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_N | x0) || N(0, I)) in nats per sample, in closed form (Ho et al. 2020, eq. 5)."""
    ab = process.alpha_bar[-1].to(x0.device)
    kl = normal_kl(ab.sqrt() * x0, torch.log(1 - ab).expand_as(x0), torch.zeros_like(x0), torch.zeros_like(x0))
    return kl.flatten(1).sum(1)


def _step_term(denoiser, x0: Tensor, n: int, variance: str, decoder: str, cond: Tensor | None,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """One Monte-Carlo draw of the bound's term at step n, with x0_hat(x_n), per sample.

    n >= 2: L_{n-1} = KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)) (Ho et al. 2020, eq. 5);
    n == 1: L_0 = -log p(x0 | x1), the discretized Gaussian decoder (eq. 13) or a Gaussian density.
    Returns (term in nats, mean squared error of x0_hat on the data scale), both (B,).
    """
    process: DDPM = denoiser.process
    t = torch.full((x0.shape[0],), n / process.num_steps, dtype=F64, device=x0.device)
    s = torch.full_like(t, (n - 1) / process.num_steps)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    xt = process.corrupt(x0, t, noise)
    pred = denoiser(xt, t, cond)
    # The network runs in the caller's dtype; the Gaussian algebra runs in float64.
    var_interp = None if pred.var_interp is None else pred.var_interp.to(F64)
    pred64 = Prediction(pred.x0.to(F64), pred.eps.to(F64), var_interp)
    x0d, xtd = x0.to(F64), xt.to(F64)
    mean, log_var = reverse_step(process, pred64, xtd, t, s, variance)
    if n == 1:
        if decoder == "discretized":
            per_dim = -discretized_gaussian_log_likelihood(x0d, mean, 0.5 * log_var)
        else:
            per_dim = 0.5 * (math.log(2 * math.pi) + log_var + (x0d - mean) ** 2 * torch.exp(-log_var))
    else:
        true_mean, true_var = process.posterior(x0d, xtd, t, s)
        per_dim = normal_kl(true_mean, bcast(torch.log(true_var), x0d), mean, log_var)
    mse = ((pred64.x0 - x0d) ** 2).flatten(1).mean(1)
    return per_dim.flatten(1).sum(1), mse


def _kl_steps(num_steps: int, steps: int | None, generator: torch.Generator | None) -> tuple[list[int], list[float]]:
    """The KL steps n in N..2 (descending) to evaluate, and the weight of each in the sum.

    With ``steps`` = M < N - 1, 2..N is cut into at most M strata evenly spaced in log n and one
    step is drawn uniformly from each (shared by the batch), weighted by its stratum's size: an
    unbiased (stratified) estimate of the full sum. Log spacing keeps the small-n terms, which are
    the largest and change fastest (roughly ~ 1/n), in small strata, so the variance stays low.
    """
    if steps is None or steps >= num_steps - 1:
        return list(range(num_steps, 1, -1)), [1.0] * (num_steps - 1)
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    edges = torch.logspace(math.log10(2), math.log10(num_steps + 1), int(steps) + 1, dtype=F64)
    edges = torch.unique(edges.round().long())  # strata [lo, hi) with lo = 2 and the last hi = N + 1
    lo, size = edges[:-1], edges[1:] - edges[:-1]
    n = lo + (torch.rand(len(lo), generator=generator, dtype=F64) * size).long()
    return n.flip(0).tolist(), size.flip(0).to(F64).tolist()


@torch.no_grad()
def vlb_bits_per_dim(denoiser, x0: Tensor, *, variance: str = "beta_tilde", decoder: str = "discretized",
                     cond: Tensor | None = None, steps: int | None = None,
                     generator: torch.Generator | None = None) -> dict:
    """The DDPM variational bound L = L_T + sum_{n=2..N} L_{n-1} + L_0 (Ho et al. 2020, eq. 5).

    L_T = KL(q(x_N | x0) || N(0, I)) is exact; each KL term and the decoder L_0 = -log p(x0 | x1)
    (eq. 13; its mean is the model's mean at step 1, x0_hat, its variance per ``variance``) are
    one-sample Monte-Carlo estimates with x_n ~ q(x_n | x0) drawn independently per step and sample,
    so the result is an unbiased estimate of the bound for each x0, batched over samples.

    Args:
        denoiser: a denoiser on a ``DDPM`` process (the bound needs its discrete steps).
        x0: (B, ...) data; with ``decoder="discretized"`` on the 8-bit grid of [-1, 1].
        variance: reverse variance "beta_tilde", "beta" or "learned" (see ``reverse_step``).
        decoder: "discretized" (Ho et al. eq. 13; bits/dim of the 8-bit data) or "gaussian"
            (the density N(x0; x0_hat, sigma_1^2), a bound on a continuous NLL on the [-1, 1] scale).
        steps: evaluate at most this many KL terms, one per log-spaced stratum of steps, reweighted
            to an unbiased estimate of their sum (``_kl_steps``); None evaluates all N - 1. The
            draw of steps is shared by the batch, so ``bpd_stderr`` does not include its variance.
        generator: the source of every random draw.

    Returns a dict: ``nll`` (B,) nats (the bound), ``bits_per_dim`` (B,), ``bpd_mean``, ``bpd_stderr``
    (across samples), ``prior``, ``kl`` (weighted KL sum), ``decoder`` (B,) nats; the curve over the
    evaluated steps ``n`` (M,) descending and ending at 1, ``terms`` (B, M) nats (L_0 at n = 1),
    ``weights`` (M,) and ``x0_mse`` (B, M), the mean squared error of x0_hat(x_n).
    """
    process = denoiser.process
    if not isinstance(process, DDPM):
        raise ValueError(f"vlb_bits_per_dim needs a discrete DDPM process (the bound sums over its steps); "
                         f"got {type(process).__name__}: use ode_log_likelihood for continuous processes")
    if decoder not in ("discretized", "gaussian"):
        raise ValueError(f"unknown decoder {decoder!r}; choose 'discretized' or 'gaussian'")
    if decoder == "discretized":
        _check_8bit(x0)
    ns, weights = _kl_steps(process.num_steps, steps, generator)
    ns, weights = ns + [1], weights + [1.0]  # the decoder L_0 at n = 1
    terms, mses = zip(*(_step_term(denoiser, x0, n, variance, decoder, cond, generator) for n in ns))
    terms, mses = torch.stack(terms, 1), torch.stack(mses, 1)
    weights = torch.tensor(weights, dtype=F64, device=terms.device)
    prior = _prior_kl(process, x0.to(F64))
    kl = (terms[:, :-1] * weights[:-1]).sum(1)
    out = _summary(prior + kl + terms[:, -1], x0[0].numel())
    out.update(prior=prior, kl=kl, decoder=terms[:, -1], n=torch.tensor(ns), terms=terms, weights=weights,
               x0_mse=mses)
    return out


# --- the probability-flow ODE ---------------------------------------------------------------------

def _derivative(y: Tensor, t: Tensor) -> Tensor:
    """dy/dt of a scalar y(t) by autograd, 0 where y does not depend on t."""
    if not y.requires_grad:  # e.g. alpha = 1 of a VE process does not depend on t
        return torch.zeros((), dtype=F64)
    (g,) = torch.autograd.grad(y, t, retain_graph=True, allow_unused=True)
    return torch.zeros((), dtype=F64) if g is None else g


def _drift_coefficients(process: GaussianProcess, t: float) -> tuple[float, float]:
    """(c_x, c_eps) with dx/dt = c_x x + c_eps eps_hat(x, t), the probability-flow ODE.

    From x_t = alpha x0 + sigma eps: f = alpha'/alpha and g^2 = d sigma^2/dt - 2 f sigma^2 (Song et
    al. 2021, eq. 13 with score = -eps/sigma), so dx/dt = f x - g^2/2 score
    = (alpha'/alpha) x + (sigma' - sigma alpha'/alpha) eps_hat, Karras et al. 2022, eq. 4 in x.
    alpha' and sigma' come from autograd on the process's own float64 functions, exact for any schedule.
    """
    with torch.enable_grad():
        tt = torch.tensor(t, dtype=F64, requires_grad=True)
        a, s = process.alpha_sigma(tt)
        da, ds = _derivative(a, tt), _derivative(s, tt)
    c_x = float(da / a.detach())
    return c_x, float(ds - s.detach() * c_x)


def _divergence(drift: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    """div f per sample: exact (one vector-Jacobian product per dimension) or Hutchinson's v^T J v
    for each probe (Grathwohl et al. 2019, eq. 6-7). Returns (B,) or (K, B)."""
    flat = drift.flatten(1)
    if probes is None:
        diag = [torch.autograd.grad(flat[:, i].sum(), x, retain_graph=True)[0].flatten(1)[:, i]
                for i in range(flat.shape[1])]
        return torch.stack(diag, 1).sum(1)
    vjps = [torch.autograd.grad((flat * v).sum(), x, retain_graph=True)[0].flatten(1) for v in probes]
    return torch.stack([(g * v).sum(1) for g, v in zip(vjps, probes)])


def _prior_log_prob(process: GaussianProcess, x: Tensor, t_end: float) -> Tensor:
    """log N(x; 0, v I) with v = 1 for VP and sigma(t_end)^2 for VE: the process prior, a standard
    approximation of q(x_T) whose error shrinks with alpha(1) (VP) or 1 / sigma_max (VE)."""
    var = float(process.sigma(torch.tensor(t_end)) ** 2) if process.kind == "ve" else 1.0
    flat = x.flatten(1).to(F64)
    return -0.5 * (flat**2).sum(1) / var - 0.5 * flat.shape[1] * math.log(2 * math.pi * var)


def ode_log_likelihood(denoiser, x: Tensor, *, t_eps: float | None = None, t_end: float = 1.0,
                       exact_trace: bool | None = None, hutchinson_samples: int = 1, rtol: float = 1e-5,
                       atol: float = 1e-5, method: str = "RK45", generator: torch.Generator | None = None,
                       cond: Tensor | None = None) -> dict:
    """log p_0(x) under the probability-flow ODE (Song et al. 2021, Appendix D, eq. 39-40).

    Solves dx/dt = f(x, t) together with d/dt int div f from t_eps to t_end (scipy ``solve_ivp`` on
    the flattened batch in float64; the denoiser sees ``x``'s dtype), then
    log p_0(x) = log p_T(x_T) + int_{t_eps}^{t_end} div f(x_t, t) dt with p_T the process prior
    (``_prior_log_prob``).

    Args:
        t_eps: where the ODE starts (x is taken as x_{t_eps}); default 1e-5, or 1 / N for a DDPM,
            whose network never saw t < 1 / N.
        exact_trace: exact divergence (D backward passes per evaluation); default when D <= 16,
            else Hutchinson's estimator with ``hutchinson_samples`` Rademacher probes per sample,
            fixed over the solve so each probe gives one unbiased estimate of the integral.
        generator: draws the probes.

    Returns a dict: ``nll`` (B,) nats (the mean over probes), ``bits_per_dim`` (B,), ``bpd_mean``,
    ``bpd_stderr`` (across samples), ``nll_stderr`` (B,) the standard error across probes (None for
    the exact trace or one probe), ``prior_log_prob``, ``delta_log_prob`` (B,), ``nfe``.
    """
    process = denoiser.process
    t0 = (process.t_min if isinstance(process, DDPM) else 1e-5) if t_eps is None else float(t_eps)
    shape, dim, batch = x.shape, x[0].numel(), x.shape[0]
    exact = dim <= EXACT_TRACE_MAX_DIM if exact_trace is None else exact_trace
    probes = None
    if not exact:
        signs = torch.randint(0, 2, (hutchinson_samples, batch, dim), generator=generator)
        probes = (2 * signs - 1).to(device=x.device, dtype=x.dtype)
    n_div = 1 if exact else hutchinson_samples

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        xt = torch.from_numpy(y[: batch * dim]).to(device=x.device, dtype=x.dtype).reshape(shape)
        c_x, c_eps = _drift_coefficients(process, t)
        with torch.enable_grad():
            xt.requires_grad_(True)
            eps = denoiser(xt, torch.full((batch,), t, dtype=F64, device=x.device), cond).eps
            drift = c_x * xt + c_eps * eps
            div = _divergence(drift, xt, probes)
        return np.concatenate([drift.detach().flatten().to(F64).cpu().numpy(),
                               div.detach().flatten().to(F64).cpu().numpy()])

    y0 = np.concatenate([x.detach().flatten().to(F64).cpu().numpy(), np.zeros(n_div * batch)])
    sol = solve_ivp(rhs, (t0, t_end), y0, method=method, rtol=rtol, atol=atol)
    if not sol.success:
        raise RuntimeError(f"probability-flow ODE solve failed: {sol.message}")
    y_end = torch.from_numpy(sol.y[:, -1])
    prior = _prior_log_prob(process, y_end[: batch * dim].reshape(batch, dim), t_end)
    delta = y_end[batch * dim:].reshape(n_div, batch)
    nll_probes = -(prior + delta)
    out = _summary(nll_probes.mean(0), dim)
    stderr = nll_probes.std(0) / math.sqrt(n_div) if n_div > 1 else None
    out.update(nll_stderr=stderr, prior_log_prob=prior, delta_log_prob=delta.mean(0), nfe=int(sol.nfev))
    return out


def dequantized_bits_per_dim(denoiser, x: Tensor, *, generator: torch.Generator | None = None,
                             **ode_kwargs) -> dict:
    """Bits/dim of 8-bit data from the ODE likelihood of uniformly dequantized data.

    Pixel k in 0..255 sits at x = k / 127.5 - 1; we add u ~ U(-1/255, 1/255), one bin of width
    2/255 = 1/127.5 centred on x (the same bins as the discretized decoder, Ho et al. 2020, eq. 13).
    On the pixel scale y = 127.5 (z + 1) the density is p_y = p_z / 127.5^D and each bin has width 1,
    so by Jensen -log P(k) <= E_u[-log p_y(y)] = E_u[-log p_z(z)] + D log 127.5 (Theis et al. 2016;
    Song et al. 2021, Appendix D.2), i.e. bits/dim = (nll_z / D + log 127.5) / ln 2.
    One dequantization draw per sample; ``ode_kwargs`` go to ``ode_log_likelihood``.
    Returns its dict with ``nll`` (nats) and ``bits_per_dim`` (with mean, stderr) now bounds on the
    discrete 8-bit NLL, ``continuous_nll`` (-log p_z, nats on [-1, 1]) and ``x_dequantized``.
    """
    _check_8bit(x)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    z = x + (2 * u - 1) * HALF_BIN
    out = ode_log_likelihood(denoiser, z, generator=generator, **ode_kwargs)
    dim, continuous = out["dim"], out["nll"]
    out.update(_summary(continuous + dim * math.log(127.5), dim))
    out.update(continuous_nll=continuous, x_dequantized=z)
    return out
