"""The Gaussian forward processes and their schedules, checked against independent computations.

Every expected value here is computed from the papers' formulas written out afresh (numpy / math
in float64) or from first principles (iterating the one-step chain, Gaussian conditioning), never
by calling the code under test a second time. Monte-Carlo checks use seeded generators and
5-standard-error tolerances.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from undiffuse.processes import DDPM, EDM, VE, VP, from_config, karras_sigmas
from undiffuse.processes.schedules import ALPHA_BAR_MIN, discrete_betas

F64 = torch.float64
Z = 5.0  # standard errors allowed in Monte-Carlo checks


# --------------------------------------------------------------------------------------------
# Independent schedule formulas (the papers, written out in numpy)
# --------------------------------------------------------------------------------------------

def ref_linear_betas(n_steps: int) -> np.ndarray:
    """Ho et al. 2020: beta from 1e-4 to 0.02 over 1000 steps, scaled by 1000/N for other N."""
    scale = 1000.0 / n_steps
    return np.linspace(scale * 1e-4, scale * 0.02, n_steps)


def ref_cosine_alpha_bar(t, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2((t+s)/(1+s) pi/2)."""
    t = np.asarray(t, dtype=np.float64)
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0.0)


def ref_sigmoid_alpha_bar(t, start=-3.0, end=3.0, tau=1.0) -> np.ndarray:
    """Jabri et al. 2022 / Chen 2023, Algorithm 1."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    t = np.asarray(t, dtype=np.float64)
    return (sig(end / tau) - sig((t * (end - start) + start) / tau)) / (sig(end / tau) - sig(start / tau))


def ref_betas(schedule: str, n_steps: int) -> np.ndarray:
    if schedule == "linear":
        return ref_linear_betas(n_steps)
    grid = np.arange(n_steps + 1) / n_steps
    ab = ref_cosine_alpha_bar(grid) if schedule == "cosine" else ref_sigmoid_alpha_bar(grid)
    return np.minimum(1 - ab[1:] / ab[:-1], 0.999)  # "clipped at 0.999"


def chain_moments(betas: np.ndarray, start: int = 0, stop: int | None = None):
    """Iterate q(x_n | x_{n-1}) = N(sqrt(1 - beta_n) x_{n-1}, beta_n) from step ``start`` to
    ``stop``: returns the mean coefficient m and variance v of x_n given x_start, for every n in
    start..stop (so m[0] = 1, v[0] = 0)."""
    stop = len(betas) if stop is None else stop
    m, v = [1.0], [0.0]
    for n in range(start + 1, stop + 1):
        b = float(betas[n - 1])
        m.append(math.sqrt(1 - b) * m[-1])
        v.append((1 - b) * v[-1] + b)
    return np.array(m), np.array(v)


def ref_ve_sigma(t, s_min=0.01, s_max=50.0):
    t = np.asarray(t, dtype=np.float64)
    return np.where(t > 0, s_min * (s_max / s_min) ** t, 0.0)


def ref_edm_sigma(t, s_min=0.002, s_max=80.0, rho=7.0):
    t = np.asarray(t, dtype=np.float64)
    return np.where(t > 0, (s_max ** (1 / rho) * t + s_min ** (1 / rho) * (1 - t)) ** rho, 0.0)


def all_processes():
    return [DDPM(1000, "linear"), DDPM(1000, "cosine"), DDPM(1000, "sigmoid"), DDPM(50, "cosine"),
            VP("linear"), VP("cosine"), VP("sigmoid"), VE(), VE(0.002, 80.0), EDM(),
            EDM(0.01, 20.0, rho=5.0)]


def pid(p) -> str:
    return "-".join(str(v) for v in p.config().values())


ALL = all_processes()


# --------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------

def test_linear_betas_are_ho_et_al():
    b = DDPM(1000, "linear").betas
    assert b.dtype == F64 and b.shape == (1000,)
    assert float(b[0]) == pytest.approx(1e-4, abs=1e-15)
    assert float(b[-1]) == pytest.approx(0.02, abs=1e-15)
    np.testing.assert_allclose(b.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=0, atol=1e-15)
    # Other N: rescaled by 1000/N (Nichol & Dhariwal 2021), so N=250 runs 4e-4..0.08.
    np.testing.assert_allclose(DDPM(250, "linear").betas.numpy(), np.linspace(4e-4, 0.08, 250),
                               rtol=0, atol=1e-15)


def test_cosine_alpha_bar_is_nichol_dhariwal():
    t = np.linspace(0, 0.999, 1001)  # below the alpha_bar floor, which only acts within ~3e-5 of 1
    got = VP("cosine").alpha(torch.tensor(t)) ** 2
    np.testing.assert_allclose(got.numpy(), ref_cosine_alpha_bar(t), rtol=1e-12, atol=0)
    # Discrete: beta_n = 1 - abar(n/N)/abar((n-1)/N) clipped at 0.999, abar_n = prod(1 - beta).
    for n_steps in (1000, 40):
        p = DDPM(n_steps, "cosine")
        betas = ref_betas("cosine", n_steps)
        np.testing.assert_allclose(p.betas.numpy(), betas, rtol=1e-12, atol=1e-15)
        assert float(p.betas.max()) == pytest.approx(0.999) and float(p.betas[-1]) == pytest.approx(0.999)
        np.testing.assert_allclose(p.alpha_bar[1:].numpy(), np.cumprod(1 - betas), rtol=1e-12)
        # Before the clip takes over, the product telescopes back to f(t)/f(0).
        n = np.arange(1, n_steps)
        np.testing.assert_allclose(p.alpha_bar[1:n_steps].numpy(), ref_cosine_alpha_bar(n / n_steps),
                                   rtol=1e-10)


def test_sigmoid_alpha_bar_is_chen():
    t = np.linspace(0, 1, 1001)
    ref = np.maximum(ref_sigmoid_alpha_bar(t), ALPHA_BAR_MIN)
    got = VP("sigmoid").alpha(torch.tensor(t)) ** 2
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(DDPM(1000, "sigmoid").betas.numpy(), ref_betas("sigmoid", 1000),
                               rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("schedule", ["cosine", "sigmoid"])
def test_continuous_schedule_floor(schedule):
    """alpha_bar is floored at sigmoid(-20): log-SNR(1) = -20 for cosine and sigmoid."""
    assert float(VP(schedule).log_snr(torch.tensor(1.0))) == pytest.approx(-20.0, abs=1e-6)
    assert ALPHA_BAR_MIN == pytest.approx(1 / (1 + math.exp(20)), rel=1e-7)


def test_unknown_schedule_and_bad_steps_raise():
    with pytest.raises(ValueError):
        DDPM(1000, "quadratic")
    with pytest.raises(ValueError):
        VP("quadratic")
    with pytest.raises(ValueError):
        discrete_betas("linear", 0)
    with pytest.raises(ValueError):
        VE(sigma_min=1.0, sigma_max=0.5)


def test_continuous_linear_vp_is_limit_of_ddpm_linear():
    """VP('linear') (beta(t) = 0.1 + 19.9 t) approximates DDPM's 1e-4..0.02 at t = n/N.

    The gap is a discretisation offset (beta_1 = beta(0)/N while the integral over the first
    step is slightly larger): |alpha_bar diff| stays below 1e-3 (measured 8e-4 at t ~ 0.14) and
    |log-SNR diff| below 0.1 (measured 0.095 at t = 1/N, shrinking with t)."""
    t = torch.arange(1, 1001, dtype=F64) / 1000
    ab_d, _ = chain_moments(ref_linear_betas(1000))
    ab_d = ab_d[1:] ** 2
    ab_c = np.exp(-(0.1 * t.numpy() + 9.95 * t.numpy() ** 2))  # Song et al. 2021, written out
    np.testing.assert_allclose(VP("linear").alpha(t).numpy() ** 2, ab_c, rtol=1e-12)
    assert np.abs(ab_d - ab_c).max() < 1e-3
    lam_gap = (DDPM(1000, "linear").log_snr(t) - VP("linear").log_snr(t)).abs()
    assert float(lam_gap.max()) < 0.1
    assert float(lam_gap[-1]) < 0.1 and float(lam_gap[500]) < 0.01


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
    """DESIGN.md / Ho et al. eq. 7 written out with beta and alpha_bar, for every adjacent step
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


# --------------------------------------------------------------------------------------------
# Time, log-SNR, sigma
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p", ALL, ids=pid)
def test_endpoints_and_log_snr_decreasing(p):
    t = torch.linspace(0, 1, 4001, dtype=F64)
    a, s = p.alpha_sigma(t)
    assert float(a[0]) == 1.0 and float(s[0]) == 0.0  # t = 0 is the data
    lam = p.log_snr(t)
    assert math.isinf(float(lam[0])) and float(lam[0]) > 0
    d = lam[1:].diff()
    assert bool((d <= 0).all())
    inner = (t[2:] > max(p.t_min, 1e-3)) & (t[2:] < 0.999)
    assert bool((d[inner] < 0).all())  # strictly, away from the endpoint floors
    if p.kind == "vp":
        torch.testing.assert_close(a**2 + s**2, torch.ones_like(a), rtol=0, atol=1e-12)
    else:
        assert bool((a == 1).all())


@pytest.mark.parametrize("p", ALL, ids=pid)
def test_t_from_log_snr_and_t_from_sigma_invert(p):
    t = torch.linspace(0.01, 0.99, 197, dtype=F64)
    back = p.t_from_log_snr(p.log_snr(t))
    torch.testing.assert_close(back, t, rtol=0, atol=1e-9)
    a, s = p.alpha_sigma(t)
    torch.testing.assert_close(p.t_from_sigma(s / a), t, rtol=0, atol=1e-9)
    assert float(p.t_from_sigma(torch.tensor(0.0))) == 0.0
    # sigma_max() is sigma/alpha at t = 1 and inverts to a level with that sigma/alpha (t = 1, or
    # the start of the alpha_bar-floor plateau within 3e-5 of 1 for continuous cosine / sigmoid)
    t1 = p.t_from_sigma(torch.tensor(p.sigma_max(), dtype=F64))
    a1, s1 = p.alpha_sigma(t1)
    assert float(s1 / a1) == pytest.approx(p.sigma_max(), rel=1e-7)
    assert float(t1) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("p", [DDPM(1000, "linear"), DDPM(1000, "cosine")], ids=pid)
def test_ddpm_fractional_steps_interpolate(p):
    """Between grid points alpha_bar is interpolated linearly in t (documented)."""
    n = torch.tensor([3, 417, 998])
    frac = torch.tensor([0.25, 0.5, 0.9], dtype=F64)
    t = (n + frac) / p.num_steps
    ab = np.concatenate([[1.0], np.cumprod(1 - ref_betas(p.schedule, p.num_steps))])
    want = ab[n] * (1 - frac.numpy()) + ab[n + 1] * frac.numpy()
    np.testing.assert_allclose((p.alpha(t) ** 2).numpy(), want, rtol=1e-10)


def test_ve_and_edm_sigma_formulas():
    t = np.linspace(0, 1, 501)
    tt = torch.tensor(t)
    for p, ref in [(VE(), ref_ve_sigma(t)), (VE(0.002, 80.0), ref_ve_sigma(t, 0.002, 80.0)),
                   (EDM(), ref_edm_sigma(t)), (EDM(0.01, 20.0, 5.0), ref_edm_sigma(t, 0.01, 20.0, 5.0))]:
        a, s = p.alpha_sigma(tt)
        np.testing.assert_allclose(s.numpy(), ref, rtol=1e-12, atol=0)
        assert float(s[0]) == 0.0
        assert float(s[-1]) == pytest.approx(p.s_max, rel=1e-12)
        assert p.sigma_max() == pytest.approx(p.s_max, rel=1e-12)
    # EDM at t -> 0+ approaches sigma_min (the bottom of the rho-ladder); VE at t = 0+ is sigma_min.
    assert float(EDM().sigma(torch.tensor(1e-12))) == pytest.approx(0.002, rel=1e-6)
    assert float(VE().sigma(torch.tensor(1e-12))) == pytest.approx(0.01, rel=1e-6)


def test_karras_sigmas():
    n, s_min, s_max, rho = 12, 0.002, 80.0, 7.0
    sig = karras_sigmas(n, s_min, s_max, rho)
    assert sig.dtype == F64 and sig.shape == (n + 1,)
    assert float(sig[0]) == pytest.approx(s_max, rel=1e-12)
    assert float(sig[n - 1]) == pytest.approx(s_min, rel=1e-12)
    assert float(sig[-1]) == 0.0
    # Karras et al. 2022, eq. 5, written out
    want = [(s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
            for i in range(n)]
    np.testing.assert_allclose(sig[:-1].numpy(), want, rtol=1e-12)
    root = sig[:-1] ** (1 / rho)
    steps = root.diff()
    torch.testing.assert_close(steps, torch.full_like(steps, float(steps[0])), rtol=1e-10, atol=0)
    assert bool((sig.diff() < 0).all())
    # rho = 1 is linear in sigma
    np.testing.assert_allclose(karras_sigmas(5, 1.0, 5.0, 1.0)[:-1].numpy(), [5, 4, 3, 2, 1], rtol=1e-12)


@pytest.mark.parametrize("p", ALL, ids=pid)
def test_from_config_round_trip(p):
    cfg = json.loads(json.dumps(p.config()))  # what a run directory stores
    q = from_config(cfg)
    assert type(q) is type(p) and q.config() == p.config()
    t = torch.linspace(0, 1, 101, dtype=F64)
    for u, v in zip(p.alpha_sigma(t), q.alpha_sigma(t)):
        assert torch.equal(u, v)
    assert q.kind == p.kind and q.t_min == p.t_min


def test_from_config_rejects_unknown_type():
    with pytest.raises(ValueError):
        from_config({"type": "subvp"})


# --------------------------------------------------------------------------------------------
# prior and sample_t
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p,std", [(DDPM(), 1.0), (VP("cosine"), 1.0), (VE(), 50.0), (EDM(), 80.0)],
                         ids=["ddpm", "vp", "ve", "edm"])
def test_prior_scale(p, std):
    n = 50000
    x = p.prior((n,), torch.Generator().manual_seed(5), dtype=F64)
    assert x.dtype == F64
    assert abs(float(x.mean())) < Z * std / math.sqrt(n)
    assert abs(float(x.var()) - std**2) < Z * std**2 * math.sqrt(2 / n)
    # the prior matches q(x_1) for a unit-variance x0 up to the schedule's residual signal
    a1, s1 = p.alpha_sigma(torch.tensor(1.0))
    assert float(a1**2 + s1**2) == pytest.approx(std**2, rel=2e-3 if p.kind == "ve" else 1e-4)


def test_ddpm_sample_t_uniform_over_steps():
    p = DDPM(10, "linear")
    n = 50000
    t = p.sample_t(n, torch.Generator().manual_seed(0))
    steps = t * 10
    assert torch.equal(steps, steps.round())
    counts = torch.bincount(steps.round().long(), minlength=11)
    assert int(counts[0]) == 0  # step 0 (the data) is never drawn
    expected, se = n / 10, math.sqrt(n * 0.1 * 0.9)
    assert ((counts[1:] - expected).abs() < Z * se).all(), counts


def test_continuous_sample_t_uniform():
    p = VP("cosine")
    n = 50000
    t = p.sample_t(n, torch.Generator().manual_seed(0))
    assert t.dtype == F64 and float(t.min()) >= p.t_min and float(t.max()) <= 1
    width = 1 - p.t_min
    assert abs(float(t.mean()) - (1 + p.t_min) / 2) < Z * width / math.sqrt(12 * n)
    assert abs(float(t.var()) - width**2 / 12) < Z * width**2 / 12 * math.sqrt(0.8 / n)


def test_edm_sample_t_is_lognormal_sigma():
    """Karras et al. 2022, Table 1: ln sigma ~ N(P_mean = -1.2, P_std = 1.2)."""
    p = EDM()
    n = 50000
    ln_sigma = torch.log(p.sigma(p.sample_t(n, torch.Generator().manual_seed(0))))
    assert abs(float(ln_sigma.mean()) + 1.2) < Z * 1.2 / math.sqrt(n)
    assert abs(float(ln_sigma.std()) - 1.2) < Z * 1.2 / math.sqrt(2 * n)
