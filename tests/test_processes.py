"""The Gaussian forward processes' distributions, checked against independent computations:
the closed form q(x_t | x0) and transitions q(x_t | x_s) against the iterated one-step chain, and
the posterior q(x_s | x_t, x0) against Gaussian conditioning.

Every expected value here is computed from the papers' formulas written out afresh (numpy / math
in float64, see helpers_processes.py) or from first principles (iterating the one-step chain,
Gaussian conditioning), never by calling the code under test a second time. Monte-Carlo checks use
seeded generators and 5-standard-error tolerances.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers_processes import (F64, Z, chain_moments, pid, ref_betas, ref_cosine_alpha_bar,
                               ref_edm_sigma, ref_ve_sigma)
from undiffuse.processes import DDPM, EDM, VE, VP


# --------------------------------------------------------------------------------------------
# Closed form q(x_t | x0) vs iterating the one-step chain
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("n_steps", [1000, 64])
def test_closed_form_matches_chain_recursion(schedule, n_steps):
    """m_n = sqrt(alpha_n) m_{n-1}, v_n = alpha_n v_{n-1} + beta_n from betas computed here."""
    p = DDPM(n_steps, schedule)
    betas = ref_betas(schedule, n_steps)
    np.testing.assert_allclose(p.betas.numpy(), betas, rtol=1e-10, atol=1e-15)
    m, v = chain_moments(betas)
    t = torch.arange(n_steps + 1, dtype=F64) / n_steps
    a, s = p.alpha_sigma(t)
    np.testing.assert_allclose(a.numpy(), m, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose((s**2).numpy(), v, rtol=1e-10, atol=1e-14)
    assert float(a[0]) == 1.0 and float(s[0]) == 0.0
    # corrupt draws exactly alpha x0 + sigma noise
    x0 = torch.tensor([[-1.5, 0.0, 0.7, 2.0]], dtype=F64).expand(n_steps + 1, 4)
    noise = torch.randn(n_steps + 1, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
    want = torch.tensor(m)[:, None] * x0 + torch.tensor(np.sqrt(v))[:, None] * noise
    torch.testing.assert_close(p.corrupt(x0, t, noise), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "sigmoid"])
def test_transition_matches_chain(schedule):
    """q(x_t | x_s): adjacent steps are (sqrt(alpha_n), beta_n); non-adjacent steps compose the chain."""
    n_steps = 200
    p = DDPM(n_steps, schedule)
    betas = ref_betas(schedule, n_steps)
    n = torch.arange(1, n_steps + 1, dtype=F64)
    a_ts, var_ts = p.transition(n / n_steps, (n - 1) / n_steps)
    np.testing.assert_allclose(a_ts.numpy(), np.sqrt(1 - betas), rtol=1e-10)
    np.testing.assert_allclose(var_ts.numpy(), betas, rtol=1e-8, atol=1e-15)
    for lo, hi in [(0, 7), (13, 150), (60, 200), (199, 200)]:
        m, v = chain_moments(betas, lo, hi)
        a_ts, var_ts = p.transition(torch.tensor(hi / n_steps, dtype=F64), torch.tensor(lo / n_steps, dtype=F64))
        assert float(a_ts) == pytest.approx(m[-1], rel=1e-10)
        assert float(var_ts) == pytest.approx(v[-1], rel=1e-8)


@pytest.mark.parametrize("p", [VP("linear"), VP("cosine"), VE(), EDM(), DDPM(100, "cosine")], ids=pid)
def test_transition_is_markov_consistent(p):
    """q(x_t|x_s) composed with q(x_u|x_t) equals q(x_u|x_s), and with q(x_s|x0) gives q(x_t|x0)."""
    for s, t, u in [(0.1, 0.3, 0.8), (0.02, 0.5, 0.51), (0.37, 0.6, 1.0)]:
        s, t, u = (torch.tensor(v, dtype=F64) for v in (s, t, u))
        a_ts, v_ts = p.transition(t, s)
        a_ut, v_ut = p.transition(u, t)
        a_us, v_us = p.transition(u, s)
        assert float(a_ut * a_ts) == pytest.approx(float(a_us), rel=1e-10)
        assert float(a_ut**2 * v_ts + v_ut) == pytest.approx(float(v_us), rel=1e-9)
        a_s, s_s = p.alpha_sigma(s)
        a_t, s_t = p.alpha_sigma(t)
        assert float(a_ts * a_s) == pytest.approx(float(a_t), rel=1e-10)
        assert float(a_ts**2 * s_s**2 + v_ts) == pytest.approx(float(s_t**2), rel=1e-9)


def test_chain_simulation_matches_corrupt_monte_carlo():
    """Simulate x_n = sqrt(1 - beta_n) x_{n-1} + sqrt(beta_n) z for 300 steps and compare the
    first two moments at several n with draws of ``corrupt`` (two-sample, 5 SE)."""
    n_steps, reps = 300, 20000
    p = DDPM(n_steps, "cosine")
    betas = torch.tensor(ref_betas("cosine", n_steps))
    x0 = torch.tensor([-1.5, 0.0, 0.7, 2.0], dtype=F64).expand(reps, 4)
    g = torch.Generator().manual_seed(1234)
    x = x0.clone()
    checkpoints = {1, 10, 75, 200, 300}
    for n in range(1, n_steps + 1):
        x = (1 - betas[n - 1]).sqrt() * x + betas[n - 1].sqrt() * torch.randn(x.shape, generator=g, dtype=F64)
        if n not in checkpoints:
            continue
        xc = p.corrupt(x0, torch.tensor(n / n_steps, dtype=F64), torch.randn(x.shape, generator=g, dtype=F64))
        m1, m2 = x.mean(0), xc.mean(0)
        v1, v2 = x.var(0), xc.var(0)
        se_m = (v1 / reps + v2 / reps).sqrt()
        assert ((m1 - m2).abs() < Z * se_m).all(), (n, m1, m2)
        se_v = ((v1**2 + v2**2) * 2 / (reps - 1)).sqrt()
        assert ((v1 - v2).abs() < Z * se_v).all(), (n, v1, v2)
        # and against the exact chain moments
        m, v = chain_moments(betas.numpy(), 0, n)
        assert ((m1 - m[-1] * x0[0]).abs() < Z * (v[-1] / reps) ** 0.5).all()


# --------------------------------------------------------------------------------------------
# Posterior q(x_s | x_t, x0) by Gaussian conditioning
# --------------------------------------------------------------------------------------------

def conditional(a_s, var_s, a_ts, var_ts, x0, xt):
    """Condition the joint Gaussian of (x_s, x_t) given x0 on x_t:
    x_s = a_s x0 + sqrt(var_s) e1, x_t = a_ts x_s + sqrt(var_ts) e2."""
    mean_s, mean_t = a_s * x0, a_ts * a_s * x0
    var_t = a_ts**2 * var_s + var_ts
    cov = a_ts * var_s
    return mean_s + cov / var_t * (xt - mean_t), var_s - cov**2 / var_t


def _ddpm_pair_moments(schedule, n_steps, lo, hi):
    betas = ref_betas(schedule, n_steps)
    m_s, v_s = chain_moments(betas, 0, lo)
    m_ts, v_ts = chain_moments(betas, lo, hi)
    return m_s[-1], v_s[-1], m_ts[-1], v_ts[-1]


def _cont_pair_moments(kind, s, t):
    """alpha, sigma from the independent formulas; a_{t|s} = a_t / a_s, var = s_t^2 - a_{t|s}^2 s_s^2
    (the unique Markov transition consistent with both marginals)."""
    if kind == "vp-cosine":
        ab = lambda u: float(ref_cosine_alpha_bar(u))  # noqa: E731
        a = lambda u: math.sqrt(ab(u))  # noqa: E731
        sg = lambda u: math.sqrt(1 - ab(u))  # noqa: E731
    elif kind == "vp-linear":
        ab = lambda u: math.exp(-(0.1 * u + 9.95 * u * u))  # noqa: E731
        a = lambda u: math.sqrt(ab(u))  # noqa: E731
        sg = lambda u: math.sqrt(1 - ab(u))  # noqa: E731
    elif kind == "ve":
        a, sg = (lambda u: 1.0), (lambda u: float(ref_ve_sigma(u)))
    else:
        a, sg = (lambda u: 1.0), (lambda u: float(ref_edm_sigma(u)))
    a_ts = a(t) / a(s)
    return a(s), sg(s) ** 2, a_ts, sg(t) ** 2 - a_ts**2 * sg(s) ** 2


POSTERIOR_CASES = [
    # (process, s, t, independent moments)
    *[(DDPM(1000, sch), n - 1, n, sch) for sch in ("linear", "cosine") for n in (2, 10, 500, 1000)],
    (DDPM(1000, "linear"), 100, 400, "linear"),
    (DDPM(1000, "sigmoid"), 3, 950, "sigmoid"),
    (DDPM(1000, "cosine"), 0, 1, "cosine"),
    (VP("cosine"), 0.3, 0.7, "vp-cosine"),
    (VP("cosine"), 0.69, 0.7, "vp-cosine"),
    (VP("linear"), 0.05, 0.9, "vp-linear"),
    (VE(), 0.2, 0.6, "ve"),
    (VE(), 0.59, 0.6, "ve"),
    (EDM(), 0.4, 0.9, "edm"),
    (EDM(), 0.05, 0.1, "edm"),
]


@pytest.mark.parametrize("p,s,t,kind", POSTERIOR_CASES,
                         ids=[f"{type(c[0]).__name__}-{c[3]}-{c[1]}-{c[2]}" for c in POSTERIOR_CASES])
def test_posterior_is_gaussian_conditioning(p, s, t, kind):
    if isinstance(p, DDPM):
        a_s, var_s, a_ts, var_ts = _ddpm_pair_moments(kind, p.num_steps, s, t)
        s, t = s / p.num_steps, t / p.num_steps
    else:
        a_s, var_s, a_ts, var_ts = _cont_pair_moments(kind, s, t)
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(6, 3, generator=g, dtype=F64)
    xt = 2 * torch.randn(6, 3, generator=g, dtype=F64)
    mean_ref, var_ref = conditional(a_s, var_s, a_ts, var_ts, x0, xt)
    mean, var = p.posterior(x0, xt, torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64))
    torch.testing.assert_close(mean, mean_ref, rtol=1e-8, atol=1e-10)
    assert float(var) == pytest.approx(var_ref, rel=1e-7, abs=1e-15)
    assert float(p.posterior_variance(torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64))) == \
        pytest.approx(var_ref, rel=1e-7, abs=1e-15)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddpm_posterior_is_design_formula(schedule):
    """docs/conventions.md / Ho et al. eq. 7 written out with beta and alpha_bar, for every adjacent step
    n = 2..N (batched over steps: per-sample t and s)."""
    n_steps = 1000
    p = DDPM(n_steps, schedule)
    beta = ref_betas(schedule, n_steps)
    ab = np.concatenate([[1.0], np.cumprod(1 - beta)])
    n = np.arange(2, n_steps + 1)
    b, ab_n, ab_prev = beta[n - 1], ab[n], ab[n - 1]
    c_x0 = np.sqrt(ab_prev) * b / (1 - ab_n)
    c_xt = np.sqrt(1 - b) * (1 - ab_prev) / (1 - ab_n)
    beta_tilde = (1 - ab_prev) / (1 - ab_n) * b
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(len(n), 2, generator=g, dtype=F64)
    xt = torch.randn(len(n), 2, generator=g, dtype=F64)
    t = torch.tensor(n / n_steps)
    s = torch.tensor((n - 1) / n_steps)
    mean, var = p.posterior(x0, xt, t, s)
    want = torch.tensor(c_x0)[:, None] * x0 + torch.tensor(c_xt)[:, None] * xt
    torch.testing.assert_close(mean, want, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(var.numpy(), beta_tilde, rtol=1e-7)


@pytest.mark.parametrize("p,s,t", [(DDPM(100, "linear"), 0.3, 0.6), (VP("cosine"), 0.2, 0.7),
                                   (VE(), 0.3, 0.8), (EDM(), 0.5, 0.6)], ids=["ddpm", "vp", "ve", "edm"])
def test_posterior_sampling_recovers_marginal_monte_carlo(p, s, t):
    """x_t ~ q(x_t|x0) then x_s ~ q(x_s|x_t,x0) must be distributed as q(x_s|x0) (5 SE)."""
    reps = 40000
    g = torch.Generator().manual_seed(11)
    x0 = torch.tensor([0.8, -1.3], dtype=F64).expand(reps, 2)
    tt, ss = torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64)
    xt = p.corrupt(x0, tt, torch.randn(reps, 2, generator=g, dtype=F64))
    mean, var = p.posterior(x0, xt, tt, ss)
    xs = mean + var.sqrt() * torch.randn(reps, 2, generator=g, dtype=F64)
    a_s, s_s = p.alpha_sigma(ss)
    target_mean, target_var = a_s * x0[0], s_s**2
    assert ((xs.mean(0) - target_mean).abs() < Z * (target_var / reps).sqrt()).all()
    assert ((xs.var(0) - target_var).abs() < Z * target_var * math.sqrt(2 / reps)).all()
