"""Losses (diffusion_loss, min-SNR, vlb_term and the hybrid objective) and the likelihood pieces.

The networks here are dummies that return the exact training target computed in the test from
known (x0, eps) (helpers_denoiser.py), so a loss that weights wrongly returns the wrong number.
Expected values come from the papers' formulas written out here (Hang et al. 2023, Nichol &
Dhariwal 2021) or from scipy, never from the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch import nn

from helpers_denoiser import F64, SHAPE, T, TargetNet, _setup, exact_target, gen
from undiffuse.denoiser import Denoiser
from undiffuse.distributions import discretized_gaussian_log_likelihood, normal_kl
from undiffuse.losses import diffusion_loss, vlb_term
from undiffuse.processes import DDPM, EDM, VE, VP


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
    with pytest.raises(ValueError, match="unknown loss 'huber'"):
        diffusion_loss(den, x0, t=T, noise=eps, loss="huber")
    with pytest.raises(ValueError, match="unknown weighting 'p2'"):
        diffusion_loss(den, x0, t=T, noise=eps, weighting="p2")


# Three levels whose (alpha, sigma) are Pythagorean triples, so SNR = (alpha / sigma)^2 is a plain
# fraction: 576/49 (~11.8), 16/9 and 9/16.
MIN_SNR_LEVELS = [(0.96, 0.28), (0.8, 0.6), (0.6, 0.8)]
# The loss / d^2 for a constant error d in the prediction's own space, worked out by hand from Hang et
# al. 2023, eq. 9-10 (the loss is min(SNR, gamma) ||x0_hat - x0||^2 whatever the parameterization):
#   x0:  x0 error d,                 loss min(SNR, gamma) d^2
#   eps: x0 error -(sigma/alpha) d,  loss min(SNR, gamma) / SNR d^2
#   v:   x0 error -sigma d (VP),     loss min(SNR, gamma) sigma^2 d^2
# e.g. gamma 5 at (0.96, 0.28): min = 5, so eps gives 5 * 49/576 = 245/576 and v 5 * 0.0784 = 0.392.
MIN_SNR_BY_HAND = {
    5.0: {"x0": [5, 16 / 9, 9 / 16], "eps": [245 / 576, 1, 1], "v": [0.392, 0.64, 0.36]},
    1.0: {"x0": [1, 1, 9 / 16], "eps": [49 / 576, 9 / 16, 1], "v": [0.0784, 0.36, 0.36]},
}


@pytest.mark.parametrize("process", [DDPM(1000, "cosine"), VP("linear")], ids=["ddpm-cos", "vp-lin"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("gamma", [5.0, 1.0])
def test_min_snr_is_clipped_snr_times_x0_error(process, prediction, gamma):
    """Hang et al. 2023, eq. 9-10, against the hand-computed table above (both branches of the min
    at each gamma): the weighting under test never computes its own expected value."""
    a = torch.tensor([a for a, _ in MIN_SNR_LEVELS], dtype=F64)
    s = torch.tensor([s for _, s in MIN_SNR_LEVELS], dtype=F64)
    t = process.t_from_sigma(s / a)
    got_a, got_s = process.alpha_sigma(t)
    torch.testing.assert_close(torch.stack([got_a, got_s]), torch.stack([a, s]), rtol=0, atol=1e-12)
    shape = (3, 2, 3, 3)
    x0 = 0.5 * torch.randn(shape, generator=gen(13), dtype=F64)
    eps = torch.randn(shape, generator=gen(14), dtype=F64)
    d = 0.1
    den = Denoiser(TargetNet(exact_target(prediction, x0, eps, a.view(-1, 1, 1, 1), s.view(-1, 1, 1, 1)) + d),
                   process, prediction)
    got = diffusion_loss(den, x0, t=t, noise=eps, weighting="min_snr", snr_gamma=gamma)
    want = torch.tensor(MIN_SNR_BY_HAND[gamma][prediction], dtype=F64) * d**2
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)


def test_min_snr_refuses_edm():
    den, x0, eps, _, _ = _loss_setup(EDM(), "edm")
    with pytest.raises(ValueError, match="min_snr weighting is not defined for EDM"):
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
    with pytest.raises(ValueError, match="learned variance is defined for discrete DDPM processes only"):
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
