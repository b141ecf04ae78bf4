"""Parameterizations (eps / x0 / v / EDM), conversions, losses and the likelihood pieces.

The networks here are dummies that return the exact training target computed in the test from
known (x0, eps), so a Denoiser that wires a parameterization wrongly returns the wrong x0 / eps,
and a loss that weights wrongly returns the wrong number. Expected values come from the papers'
formulas written out here (Karras et al. 2022 Table 1, Salimans & Ho 2022, Hang et al. 2023,
Nichol & Dhariwal 2021) or from scipy, never from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from undiffuse.denoiser import (Denoiser, Prediction, eps_from_x0, score_from_eps, v_from,
                                x0_eps_from_v, x0_from_eps)
from undiffuse.distributions import discretized_gaussian_log_likelihood, normal_kl
from undiffuse.losses import diffusion_loss, vlb_term
from undiffuse.processes import DDPM, EDM, VE, VP

F64 = torch.float64
SHAPE = (5, 2, 3, 3)  # image-shaped, to exercise per-sample broadcasting
T = torch.tensor([0.02, 0.3, 0.55, 0.9, 1.0], dtype=F64)  # one level per sample


def gen(seed):
    return torch.Generator().manual_seed(seed)


def col(v, like=SHAPE):
    return v.reshape(-1, *([1] * (len(like) - 1)))


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------

def _alpha_sigma_cases():
    g = gen(0)
    theta = torch.rand(64, generator=g, dtype=F64) * (math.pi / 2 - 0.02) + 0.01
    ve_sigma = torch.exp(torch.empty(64, dtype=F64).uniform_(-5, 4, generator=g))
    general_a = torch.rand(64, generator=g, dtype=F64) * 2 + 0.05
    general_s = torch.rand(64, generator=g, dtype=F64) * 3 + 0.01
    return {"vp": (theta.cos(), theta.sin()), "ve": (torch.ones(64, dtype=F64), ve_sigma),
            "general": (general_a, general_s)}


@pytest.mark.parametrize("kind", ["vp", "ve", "general"])
def test_conversions_round_trip(kind):
    a, s = _alpha_sigma_cases()[kind]
    alpha, sigma = a[:, None], s[:, None]
    g = gen(1)
    x0 = torch.randn(64, 4, generator=g, dtype=F64)
    eps = torch.randn(64, 4, generator=g, dtype=F64)
    xt = alpha * x0 + sigma * eps
    torch.testing.assert_close(x0_from_eps(xt, eps, alpha, sigma), x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_from_x0(xt, x0, alpha, sigma), eps, rtol=1e-10, atol=1e-10)
    v = alpha * eps - sigma * x0  # Salimans & Ho 2022, sec. 4
    torch.testing.assert_close(v_from(x0, eps, alpha, sigma), v, rtol=1e-12, atol=1e-12)
    x0_v, eps_v = x0_eps_from_v(xt, v, alpha, sigma)
    torch.testing.assert_close(x0_v, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(eps_v, eps, rtol=1e-10, atol=1e-10)


def test_score_is_gradient_of_log_density():
    """score_from_eps(eps, sigma) = grad_xt log N(xt; alpha x0, sigma^2 I), by autograd."""
    g = gen(2)
    alpha = torch.rand(8, 1, generator=g, dtype=F64) + 0.1
    sigma = torch.rand(8, 1, generator=g, dtype=F64) + 0.1
    x0 = torch.randn(8, 3, generator=g, dtype=F64)
    eps = torch.randn(8, 3, generator=g, dtype=F64)
    xt = (alpha * x0 + sigma * eps).requires_grad_(True)
    logp = torch.distributions.Normal(alpha * x0, sigma.expand(8, 3)).log_prob(xt).sum()
    (grad,) = torch.autograd.grad(logp, xt)
    torch.testing.assert_close(score_from_eps(eps, sigma), grad, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Denoiser wiring with a target-returning dummy net
# --------------------------------------------------------------------------------------------

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


PROCESSES = [DDPM(1000, "cosine"), DDPM(1000, "linear"), VP("linear"), VE(), EDM()]
PIDS = ["ddpm-cos", "ddpm-lin", "vp-lin", "ve", "edm"]


def _setup(process, seed=3):
    g = gen(seed)
    x0 = torch.randn(SHAPE, generator=g, dtype=F64)
    eps = torch.randn(SHAPE, generator=g, dtype=F64)
    a, s = process.alpha_sigma(T)
    alpha, sigma = col(a), col(s)
    return x0, eps, alpha, sigma, alpha * x0 + sigma * eps


@pytest.mark.parametrize("process", PROCESSES, ids=PIDS)
@pytest.mark.parametrize("prediction,sigma_data", [("eps", 0.5), ("x0", 0.5), ("v", 0.5),
                                                   ("edm", 0.5), ("edm", 1.7)])
def test_denoiser_recovers_x0_and_eps(process, prediction, sigma_data):
    x0, eps, alpha, sigma, xt = _setup(process)
    net = TargetNet(exact_target(prediction, x0, eps, alpha, sigma, sigma_data))
    den = Denoiser(net, process, prediction, sigma_data=sigma_data)
    pred = den(xt, T)
    assert isinstance(pred, Prediction) and pred.var_interp is None
    torch.testing.assert_close(pred.x0, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pred.eps, eps, rtol=1e-7, atol=1e-7)
    # what the network saw
    (x_in, label, _), = net.seen
    if prediction == "edm":
        _, _, c_in, c_noise = edm_coefficients(sigma / alpha, sigma_data)
        torch.testing.assert_close(x_in, c_in * xt / alpha, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(label.double(), c_noise.flatten(), rtol=1e-6, atol=1e-6)
    else:
        torch.testing.assert_close(x_in, xt / (alpha**2 + sigma**2).sqrt(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(label.double(), process.noise_label(T).double(), rtol=1e-6, atol=1e-5)


def test_denoiser_scalar_t_and_noise_labels():
    """A scalar t is broadcast over the batch; the time embedding input follows each process."""
    x = torch.randn(3, 2, dtype=F64)
    cases = [(DDPM(), 0.25, 250.0), (VP("cosine"), 0.5, 500.0),
             (VE(0.01, 50.0), 0.5, math.log(0.01 * (5000) ** 0.5)),
             (EDM(), 1.0, math.log(80.0) / 4)]
    for process, t, label in cases:
        net = TargetNet(torch.zeros(3, 2, dtype=F64))
        Denoiser(net, process, "eps")(x, torch.tensor(t, dtype=F64))
        assert net.seen[0][1].shape == (3,)
        torch.testing.assert_close(net.seen[0][1].double(), torch.full((3,), label, dtype=F64),
                                   rtol=1e-6, atol=1e-6)


def test_denoiser_learned_variance_and_errors():
    process = DDPM(100)
    x0, eps, alpha, sigma, xt = _setup(process)
    var = torch.rand(SHAPE, generator=gen(9), dtype=F64) * 2 - 1
    den = Denoiser(TargetNet(eps, var), process, "eps", learn_variance=True)
    pred = den(xt, T)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-9, atol=1e-9)
    assert torch.equal(pred.var_interp, var)
    with pytest.raises(ValueError):
        Denoiser(TargetNet(eps), process, "score")


def test_clip_x0_in_eval_mode():
    process = VP("cosine")
    x0, eps, alpha, sigma, xt = _setup(process)
    x0_big = 3 * x0
    den = Denoiser(TargetNet(x0_big), process, "x0", clip_x0=1.0).eval()
    pred = den(xt, T)
    torch.testing.assert_close(pred.x0, x0_big.clamp(-1, 1))
    torch.testing.assert_close(pred.eps, (xt - alpha * x0_big.clamp(-1, 1)) / sigma)


# --------------------------------------------------------------------------------------------
# diffusion_loss
# --------------------------------------------------------------------------------------------

def _loss_setup(process, prediction, delta=0.0, sigma_data=0.5, learn_variance=False, seed=4):
    x0, eps, alpha, sigma, xt = _setup(process, seed)
    target = exact_target(prediction, x0, eps, alpha, sigma, sigma_data)
    var = torch.zeros(SHAPE, dtype=F64) if learn_variance else None
    net = TargetNet(target + delta, var)
    den = Denoiser(net, process, prediction, sigma_data=sigma_data, learn_variance=learn_variance)
    return den, x0, eps, alpha, sigma


LOSS_CASES = [(p, pr) for p, pr in [(DDPM(1000, "cosine"), "eps"), (DDPM(1000, "cosine"), "x0"),
                                    (DDPM(1000, "cosine"), "v"), (DDPM(1000, "cosine"), "edm"),
                                    (VP("linear"), "v"), (VE(), "eps"), (VE(), "x0"), (VE(), "v"),
                                    (EDM(), "edm"), (EDM(), "eps")]]


@pytest.mark.parametrize("process,prediction", LOSS_CASES,
                         ids=[f"{type(p).__name__}-{pr}" for p, pr in LOSS_CASES])
@pytest.mark.parametrize("sigma_data", [0.5, 1.3])
def test_loss_zero_at_exact_target_and_uniform_in_target_space(process, prediction, sigma_data):
    """Exact target -> 0. A constant error d in the target's own space (F for EDM) -> d^2 (L2)
    and |d| (L1) at every level: "uniform" weighting is uniform in the target space."""
    den, x0, eps, _, _ = _loss_setup(process, prediction, 0.0, sigma_data)
    for loss in ("l2", "l1"):
        out = diffusion_loss(den, x0, t=T, noise=eps, loss=loss)
        assert out.shape == (SHAPE[0],)
        assert float(out.abs().max()) < (1e-18 if loss == "l2" else 1e-8), out
    d = 0.1
    den, x0, eps, _, _ = _loss_setup(process, prediction, d, sigma_data)
    torch.testing.assert_close(diffusion_loss(den, x0, t=T, noise=eps, loss="l2"),
                               torch.full((SHAPE[0],), d**2, dtype=F64), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(diffusion_loss(den, x0, t=T, noise=eps, loss="l1"),
                               torch.full((SHAPE[0],), d, dtype=F64), rtol=1e-6, atol=1e-12)


def test_l1_and_l2_of_random_errors():
    process = VP("cosine")
    x0, eps, alpha, sigma, _ = _setup(process)
    err = torch.randn(SHAPE, generator=gen(12), dtype=F64)
    den = Denoiser(TargetNet(eps + err), process, "eps")
    torch.testing.assert_close(diffusion_loss(den, x0, t=T, noise=eps, loss="l2"),
                               err.square().flatten(1).mean(1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(diffusion_loss(den, x0, t=T, noise=eps, loss="l1"),
                               err.abs().flatten(1).mean(1), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError):
        diffusion_loss(den, x0, t=T, noise=eps, loss="huber")
    with pytest.raises(ValueError):
        diffusion_loss(den, x0, t=T, noise=eps, weighting="p2")


@pytest.mark.parametrize("process", [DDPM(1000, "cosine"), VP("linear")], ids=["ddpm-cos", "vp-lin"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [5.0, 1.0])
def test_min_snr_is_clipped_snr_times_x0_error(process, prediction, gamma):
    """Hang et al. 2023, eq. 9-10: the loss is min(SNR, gamma) ||x0_hat - x0||^2 whatever the
    parameterization (VP; the eps and v forms divide by SNR and SNR + 1)."""
    x0, eps, alpha, sigma, xt = _setup(process)
    err = 0.2 * torch.randn(SHAPE, generator=gen(13), dtype=F64)
    target = exact_target(prediction, x0, eps, alpha, sigma)
    den = Denoiser(TargetNet(target + err), process, prediction)
    x0_hat = den(xt, T).x0
    snr = (alpha / sigma).flatten() ** 2
    assert float(snr.max()) > gamma > float(snr.min())  # both branches of the min are visited
    want = torch.minimum(snr, torch.tensor(gamma, dtype=F64)) * (x0_hat - x0).square().flatten(1).mean(1)
    got = diffusion_loss(den, x0, t=T, noise=eps, weighting="min_snr", snr_gamma=gamma)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-14)


def test_min_snr_refuses_edm():
    den, x0, eps, _, _ = _loss_setup(EDM(), "edm")
    with pytest.raises(ValueError):
        diffusion_loss(den, x0, t=T, noise=eps, weighting="min_snr")


def test_loss_rng_uses_only_the_generator():
    process = VP("cosine")
    x0 = torch.randn(SHAPE, generator=gen(0), dtype=F64)
    den = Denoiser(TargetNet(torch.zeros(SHAPE, dtype=F64)), process, "eps")
    state = torch.random.get_rng_state()
    a = diffusion_loss(den, x0, generator=gen(42))
    b = diffusion_loss(den, x0, generator=gen(42))
    c = diffusion_loss(den, x0, generator=gen(43))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)


# --------------------------------------------------------------------------------------------
# Learned variance: vlb_term and the hybrid objective
# --------------------------------------------------------------------------------------------

N_VLB = 100


def _vlb_setup(v_value, n):
    """DDPM(100) learned-variance denoiser that predicts eps exactly; x0 on the 8-bit grid."""
    process = DDPM(N_VLB, "linear")
    g = gen(21)
    b = len(n)
    x0 = torch.randint(0, 256, (b, 2, 2, 2), generator=g).to(F64) / 255 * 2 - 1
    eps = torch.randn(b, 2, 2, 2, generator=g, dtype=F64)
    t = torch.tensor(n, dtype=F64) / N_VLB
    a, s = process.alpha_sigma(t)
    xt = a[:, None, None, None] * x0 + s[:, None, None, None] * eps
    var = torch.full(x0.shape, float(v_value), dtype=F64)
    den = Denoiser(TargetNet(eps, var), process, "eps", learn_variance=True)
    return den, x0, eps, xt, t


def _ref_beta_and_tilde(n):
    beta = np.linspace(1e-4 * 10, 0.02 * 10, N_VLB)  # linear schedule scaled to N = 100
    ab = np.concatenate([[1.0], np.cumprod(1 - beta)])
    beta_n = beta[np.asarray(n) - 1]
    tilde = (1 - ab[np.asarray(n) - 1]) / (1 - ab[n]) * beta_n
    return beta_n, tilde, (1 - ab[1]) / (1 - ab[2]) * beta[1]


def test_vlb_term_kl_closed_form():
    n = [2, 10, 50, 100]
    beta, tilde, _ = _ref_beta_and_tilde(n)
    # v = -1: the model variance is beta_tilde and the mean exact, so the KL vanishes.
    den, x0, eps, xt, t = _vlb_setup(-1.0, n)
    kl = vlb_term(den, den(xt, t), x0, xt, t)
    assert float(kl.abs().max()) < 1e-9, kl
    # v = +1: KL(N(m, bt) || N(m, b)) = (log(b / bt) + bt / b - 1) / 2 per dim, in bits.
    den, x0, eps, xt, t = _vlb_setup(1.0, n)
    kl = vlb_term(den, den(xt, t), x0, xt, t)
    want = 0.5 * (np.log(beta / tilde) + tilde / beta - 1) / math.log(2)
    np.testing.assert_allclose(kl.numpy(), want, rtol=1e-6)
    assert bool(torch.isfinite(kl).all()) and float(kl.min()) > 0


def test_vlb_term_decoder_nll_at_first_step():
    """At n = 1 the term is the discretized-Gaussian NLL of x0 (bits/dim), variance beta_tilde_2
    for v = -1 (the clipped log-variance of Ho et al.'s code) and beta_1 for v = +1."""
    n = [1] * 6
    beta, _, tilde2 = _ref_beta_and_tilde(n)
    for v_value, var in [(-1.0, tilde2), (1.0, beta[0])]:
        den, x0, eps, xt, t = _vlb_setup(v_value, n)
        got = vlb_term(den, den(xt, t), x0, xt, t)
        # exact mean (x0_hat = x0): each pixel's mass is its own bin, edges extended to infinity
        std = math.sqrt(var)
        x = x0.numpy()
        half = 1 / 255
        p = np.where(np.abs(x) > 0.999, stats.norm.cdf(half / std),
                     stats.norm.cdf(half / std) - stats.norm.cdf(-half / std))
        want = (-np.log(p)).reshape(6, -1).mean(1) / math.log(2)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


def test_vlb_requires_ddpm():
    process = VP("cosine")
    x0, eps, alpha, sigma, xt = _setup(process)
    den = Denoiser(TargetNet(eps, torch.zeros(SHAPE, dtype=F64)), process, "eps", learn_variance=True)
    with pytest.raises(ValueError):
        vlb_term(den, den(xt, T), x0, xt, T)


class AffineVarNet(nn.Module):
    """mean half = w_mean * target, variance half = w_var (learnable scalars)."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.w_mean = nn.Parameter(torch.tensor(1.1, dtype=F64))
        self.w_var = nn.Parameter(torch.tensor(0.3, dtype=F64))

    def forward(self, x, label, cond=None):
        return torch.cat([self.w_mean * self.target, self.w_var * torch.ones_like(self.target)], 1)


def test_hybrid_loss_trains_variance_through_vlb_only():
    """L_hybrid = L_simple + lambda L_vlb: the variance output gets gradient, and the mean's
    gradient is exactly L_simple's (stop-gradient on the mean inside L_vlb)."""
    process = DDPM(N_VLB, "linear")
    n = [1, 2, 30, 99, 100]
    g = gen(5)
    x0 = torch.randint(0, 256, (5, 2, 2, 2), generator=g).to(F64) / 255 * 2 - 1
    eps = torch.randn(5, 2, 2, 2, generator=g, dtype=F64)
    t = torch.tensor(n, dtype=F64) / N_VLB
    net = AffineVarNet(eps)
    den = Denoiser(net, process, "eps", learn_variance=True)
    hybrid = diffusion_loss(den, x0, t=t, noise=eps, vlb_weight=1e-3)
    assert bool(torch.isfinite(hybrid).all())
    hybrid.sum().backward()
    g_mean, g_var = net.w_mean.grad.clone(), net.w_var.grad.clone()
    assert math.isfinite(float(g_var)) and abs(float(g_var)) > 1e-8
    # L_simple alone: ((w - 1) eps)^2 averaged -> d/dw = 2 (w - 1) mean(eps^2) per sample
    want = (2 * (1.1 - 1) * eps.square().flatten(1).mean(1)).sum()
    assert float(g_mean) == pytest.approx(float(want), rel=1e-9)
    # with vlb_weight = 0 the variance gets nothing
    net.zero_grad()
    diffusion_loss(den, x0, t=t, noise=eps, vlb_weight=0.0).sum().backward()
    assert float(net.w_var.grad) == 0.0


# --------------------------------------------------------------------------------------------
# distributions
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m1,v1,m2,v2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -1.0, 2.0),
                                         (2.0, 0.01, 1.9, 0.04), (-0.5, 3.0, 0.5, 0.2)])
def test_normal_kl_matches_numerical_integral(m1, v1, m2, v2):
    got = float(normal_kl(torch.tensor(m1, dtype=F64), torch.tensor(math.log(v1), dtype=F64),
                          torch.tensor(m2, dtype=F64), torch.tensor(math.log(v2), dtype=F64)))
    p, q = stats.norm(m1, math.sqrt(v1)), stats.norm(m2, math.sqrt(v2))
    lo, hi = m1 - 15 * math.sqrt(v1), m1 + 15 * math.sqrt(v1)
    want, _ = integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), lo, hi,
                             epsabs=1e-13, epsrel=1e-11, limit=200)
    assert got == pytest.approx(want, rel=1e-7, abs=1e-10)
    if (m1, v1) == (m2, v2):
        assert got == 0.0


@pytest.mark.parametrize("mean,scale", [(0.0, 0.1), (0.3, 0.01), (-0.9, 0.5), (1.5, 0.2),
                                        (-1.2, 0.05), (0.0, 2.0), (0.5, 0.003)])
def test_discretized_gaussian_is_a_distribution_over_256_bins(mean, scale):
    x = torch.arange(256, dtype=F64) / 255 * 2 - 1
    ll = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean),
                                             torch.full_like(x, math.log(scale)))
    assert float(ll.exp().sum()) == pytest.approx(1.0, abs=1e-8)
    # each bin's mass, from scipy
    edges = np.concatenate([[-np.inf], (x.numpy()[:-1] + x.numpy()[1:]) / 2, [np.inf]])
    mass = np.diff(stats.norm.cdf(edges, loc=mean, scale=scale))
    big = mass > 1e-9
    np.testing.assert_allclose(ll.exp().numpy()[big], mass[big], rtol=1e-7, atol=1e-12)
