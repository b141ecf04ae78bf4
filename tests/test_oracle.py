"""The Gaussian-mixture oracle: densities against scipy, E[x0 | x_t] against numerical integration
of Bayes' rule, and the score against autograd of the exact noisy log-density (Tweedie)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from undiffuse.processes import DDPM, EDM, VE, VP
from undiffuse.testing import GaussianMixture, OracleDenoiser

F64 = torch.float64
Z = 5.0

MEANS = [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]]
STDS = [[0.3, 0.5], [0.6, 0.4], [0.45, 0.45]]  # anisotropic per component
WEIGHTS = [5.0, 3.0, 2.0]  # unnormalised on purpose


@pytest.fixture(scope="module")
def gmm():
    return GaussianMixture(torch.tensor(MEANS, dtype=F64), torch.tensor(STDS, dtype=F64), torch.tensor(WEIGHTS, dtype=F64))


def scipy_logpdf(x, means, stds, weights):
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    dens = sum(wk * stats.multivariate_normal(mk, np.diag(np.square(sk))).pdf(x)
               for wk, mk, sk in zip(w, means, stds))
    return np.log(dens)


def test_log_prob_matches_scipy(gmm):
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 2
    np.testing.assert_allclose(gmm.log_prob(x).numpy(), scipy_logpdf(x.numpy(), MEANS, STDS, WEIGHTS),
                               rtol=1e-10)
    torch.testing.assert_close(gmm.weights, torch.tensor([0.5, 0.3, 0.2], dtype=F64))
    r = gmm.responsibilities(x)
    torch.testing.assert_close(r.sum(1), torch.ones(50, dtype=F64))


def test_isotropic_std_forms():
    a = GaussianMixture(torch.tensor(MEANS, dtype=F64), torch.tensor([0.3, 0.6, 0.45], dtype=F64))
    b = GaussianMixture(torch.tensor(MEANS, dtype=F64), 0.5)
    assert a.stds.shape == (3, 2) and torch.equal(a.stds[:, 0], a.stds[:, 1])
    assert b.stds.shape == (3, 2) and bool((b.stds == 0.5).all())
    torch.testing.assert_close(b.weights, torch.full((3,), 1 / 3, dtype=F64))


def test_sample_moments_and_component_frequencies(gmm):
    n = 60000
    x, k = gmm.sample(n, torch.Generator().manual_seed(1))
    assert x.shape == (n, 2) and x.dtype == F64
    w = np.array(WEIGHTS) / sum(WEIGHTS)
    freq = torch.bincount(k, minlength=3).double().numpy() / n
    assert (np.abs(freq - w) < Z * np.sqrt(w * (1 - w) / n)).all(), freq
    mu, sd = np.array(MEANS), np.array(STDS)
    mean = (w[:, None] * mu).sum(0)
    var = (w[:, None] * (sd**2 + mu**2)).sum(0) - mean**2
    assert (np.abs(x.mean(0).numpy() - mean) < Z * np.sqrt(var / n)).all()
    # per-component draws have that component's moments
    for c in range(3):
        sel = x[k == c]
        assert (np.abs(sel.mean(0).numpy() - mu[c]) < Z * sd[c] / math.sqrt(len(sel))).all()
        assert (np.abs(sel.std(0).numpy() - sd[c]) < Z * sd[c] / math.sqrt(2 * len(sel))).all()
    xc, kc = gmm.sample(1000, torch.Generator().manual_seed(2), component=2)
    assert bool((kc == 2).all())
    assert (np.abs(xc.mean(0).numpy() - mu[2]) < Z * sd[2] / math.sqrt(1000)).all()


def test_noised_and_log_prob_t(gmm):
    alpha, sigma = 0.6, 0.9
    noisy = gmm.noised(alpha, sigma)
    x = torch.randn(40, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    stds = np.sqrt(alpha**2 * np.square(STDS) + sigma**2)
    want = scipy_logpdf(x.numpy(), alpha * np.array(MEANS), stds, WEIGHTS)
    np.testing.assert_allclose(noisy.log_prob(x).numpy(), want, rtol=1e-10)
    # Monte Carlo: alpha x0 + sigma eps has the noised mixture's mean and covariance
    n = 60000
    g = torch.Generator().manual_seed(4)
    x0, _ = gmm.sample(n, g)
    xt = alpha * x0 + sigma * torch.randn(n, 2, generator=g, dtype=F64)
    ref, _ = noisy.sample(n, g)
    se = (xt.var(0) / n + ref.var(0) / n).sqrt()
    assert bool(((xt.mean(0) - ref.mean(0)).abs() < Z * se).all())
    # log_prob_t at a process level is the noised mixture at that level's alpha, sigma
    for process, t in [(VP("cosine"), 0.4), (EDM(), 0.7), (DDPM(), 0.25)]:
        oracle = OracleDenoiser(gmm, process)
        a, s = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=F64)))
        stds = np.sqrt(a**2 * np.square(STDS) + s**2)
        want = scipy_logpdf(x.numpy(), a * np.array(MEANS), stds, WEIGHTS)
        np.testing.assert_allclose(oracle.log_prob_t(x, t).numpy(), want, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# E[x0 | x_t]
# --------------------------------------------------------------------------------------------

ONE_D = dict(means=[[-1.0], [0.5], [2.5]], stds=[[0.2], [0.5], [0.3]], weights=[0.2, 0.5, 0.3])


@pytest.mark.parametrize("process,t", [(VP("cosine"), 0.05), (VP("cosine"), 0.5), (VP("linear"), 0.9),
                                       (VE(), 0.3), (EDM(), 0.2), (DDPM(1000, "linear"), 0.4)],
                         ids=["vp-cos-0.05", "vp-cos-0.5", "vp-lin-0.9", "ve-0.3", "edm-0.2", "ddpm-0.4"])
def test_oracle_posterior_mean_1d_quadrature(process, t):
    """E[x0 | x_t] = int x0 p(x0) N(x_t; a x0, s^2) dx0 / int p(x0) N(x_t; a x0, s^2) dx0 by quad."""
    g = GaussianMixture(torch.tensor(ONE_D["means"], dtype=F64), torch.tensor(ONE_D["stds"], dtype=F64),
                        torch.tensor(ONE_D["weights"], dtype=F64))
    oracle = OracleDenoiser(g, process)
    a, s = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=F64)))
    xt = np.array([-2.0, -0.7, 0.1, 0.9, 1.7, 3.2]) * max(a, 0.3)
    def npdf(u, m, sd):
        return math.exp(-0.5 * ((u - m) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))

    prior = lambda x0: sum(w * npdf(x0, m[0], sd[0])  # noqa: E731
                           for w, m, sd in zip(ONE_D["weights"], ONE_D["means"], ONE_D["stds"]))
    want = []
    for x in xt:
        lik = lambda x0: npdf(x, a * x0, s)  # noqa: E731
        pts = [-1.0, 0.5, 2.5, x / a]
        num = integrate.quad(lambda u: u * prior(u) * lik(u), -6, 8, points=pts, limit=400,
                             epsabs=0, epsrel=1e-12)[0]
        den = integrate.quad(lambda u: prior(u) * lik(u), -6, 8, points=pts, limit=400,
                             epsabs=0, epsrel=1e-12)[0]
        want.append(num / den)
    pred = oracle(torch.tensor(xt)[:, None], torch.tensor(t, dtype=F64))
    np.testing.assert_allclose(pred.x0[:, 0].numpy(), want, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(pred.eps[:, 0].numpy(), (xt - a * np.array(want)) / s, rtol=1e-6, atol=1e-7)


def test_oracle_posterior_mean_2d_grid(gmm):
    """Midpoint-rule Bayes on a fine 2-D grid of x0 (anisotropic components couple the dims)."""
    process = VP("cosine")
    t = 0.35
    a, s = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=F64)))
    h = 0.02
    grid = torch.arange(-5, 5, h, dtype=F64) + h / 2
    X0 = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    log_prior = torch.tensor(scipy_logpdf(X0.numpy(), MEANS, STDS, WEIGHTS))
    xt = torch.tensor([[-1.0, 0.2], [0.8, 0.9], [0.5, -1.1], [0.0, 0.0]], dtype=F64)
    want = []
    for x in xt:
        logw = log_prior - ((x - a * X0) ** 2).sum(1) / (2 * s**2)
        w = torch.softmax(logw, 0)
        want.append((w[:, None] * X0).sum(0))
    pred = OracleDenoiser(gmm, process)(xt, torch.tensor(t, dtype=F64))
    torch.testing.assert_close(pred.x0, torch.stack(want), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("process,t", [(VP("cosine"), 0.1), (VP("cosine"), 0.8), (VE(), 0.5),
                                       (EDM(), 0.3), (DDPM(1000, "cosine"), 0.6)],
                         ids=["vp-cos-0.1", "vp-cos-0.8", "ve-0.5", "edm-0.3", "ddpm-cos-0.6"])
def test_oracle_score_is_grad_log_density(gmm, process, t):
    """Tweedie: -eps_hat / sigma = grad_x log q_t(x), with log q_t from the closed-form mixture."""
    oracle = OracleDenoiser(gmm, process)
    a, s = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=F64)))
    x = (torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=F64) * (a + s)
         ).requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.noised(a, s).log_prob(x).sum(), x)
    eps = oracle(x.detach(), torch.tensor(t, dtype=F64)).eps
    torch.testing.assert_close(-eps / s, grad, rtol=1e-8, atol=1e-10)


def test_oracle_class_conditional(gmm):
    process = VP("cosine")
    t = 0.5
    oracle = OracleDenoiser(gmm, process)
    a, s = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=F64)))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    k = torch.tensor([0, 1, 2, 3, 0, 2])  # 3 = K means unconditional
    got = oracle(x, torch.tensor(t, dtype=F64), cond=k).x0
    uncond = oracle(x, torch.tensor(t, dtype=F64)).x0
    mu, sd = np.array(MEANS), np.array(STDS)
    for i, kk in enumerate(k.tolist()):
        if kk == 3:
            torch.testing.assert_close(got[i], uncond[i])
            continue
        want = mu[kk] + a * sd[kk] ** 2 / (a**2 * sd[kk] ** 2 + s**2) * (x[i].numpy() - a * mu[kk])
        np.testing.assert_allclose(got[i].numpy(), want, rtol=1e-10)


def test_oracle_shapes_dtypes_and_call_count(gmm):
    process = DDPM()
    oracle = OracleDenoiser(gmm, process)
    x = torch.randn(4, 1, 2, generator=torch.Generator().manual_seed(7))  # float32, image-ish
    pred = oracle(x, torch.tensor(0.5))
    assert pred.x0.shape == x.shape and pred.x0.dtype == torch.float32 and pred.eps.dtype == torch.float32
    ref = oracle(x.double().reshape(4, 2), torch.tensor(0.5, dtype=F64))
    torch.testing.assert_close(pred.x0.reshape(4, 2).double(), ref.x0, rtol=1e-6, atol=1e-6)
    # per-sample t
    tt = torch.tensor([0.1, 0.4, 0.7, 1.0], dtype=F64)
    per = oracle(x.double(), tt).x0
    for i in range(4):
        torch.testing.assert_close(per[i], oracle(x[i:i + 1].double(), tt[i]).x0[0])
    assert oracle.calls == 1 + 1 + 1 + 4
    # at very low noise the oracle returns (nearly) the input
    small = oracle(x.double().reshape(4, 2), torch.tensor(1e-3, dtype=F64)).x0
    torch.testing.assert_close(small, x.double().reshape(4, 2) / float(process.alpha(torch.tensor(1e-3))),
                               rtol=0, atol=5e-3)
