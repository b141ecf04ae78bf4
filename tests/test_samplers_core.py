"""DDPM ancestral and DDIM samplers with the exact Gaussian-mixture denoiser.

* Distribution: samples from the oracle-driven samplers have the true mixture's mean
  log-likelihood (reference by 2-D quadrature) and per-component mass, within 5 standard errors.
* Order: DDIM (eta = 0) converges at first order to the probability-flow ODE solved here with
  scipy (DOP853, rtol = atol = 1e-10) in the scaled variables x~ = x / alpha, s = sigma / alpha,
  with the ODE's right-hand side (the mixture's E[eps | x~]) written independently in numpy.
* Randomness, step schedules, the last step and the reverse-step variances.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from undiffuse.denoiser import Prediction
from undiffuse.processes import DDPM, EDM, VE, VP
from undiffuse.samplers import check_ts, ddim, ddpm, reverse_step, timesteps
from undiffuse.testing import GaussianMixture, OracleDenoiser

from helpers_mixture import F64, MU, SD, W, Z, gen, log_sigma_levels, mixture, reference_stats, solve_pf_ode

M = 4000  # samples per distribution test


@pytest.fixture(scope="module")
def gmm():
    return mixture()


@pytest.fixture(scope="module")
def reference(gmm):
    return reference_stats(gmm)


# --------------------------------------------------------------------------------------------
# Distribution of the samples
# --------------------------------------------------------------------------------------------

DIST_CASES = [
    # id, process, sampler, steps, spacing, options
    ("ddpm-lin/ancestral-beta_tilde/1000", DDPM(1000, "linear"), ddpm, 1000, "trailing", {"variance": "beta_tilde"}),
    ("ddpm-lin/ancestral-beta/1000", DDPM(1000, "linear"), ddpm, 1000, "trailing", {"variance": "beta"}),
    ("ddpm-lin/ddim-eta0/100", DDPM(1000, "linear"), ddim, 100, "trailing", {"eta": 0.0}),
    # eta = 1 is ancestral sampling on the sub-grid; its under-dispersion bias is ~13/steps nats
    # here (measured: 0.13 at 100 steps, 0.027 at 500), so 500 steps keeps it ~1 SE.
    ("ddpm-lin/ddim-eta1/500", DDPM(1000, "linear"), ddim, 500, "trailing", {"eta": 1.0}),
    ("vp-cos/ancestral-beta_tilde/1000", VP("cosine"), ddpm, 1000, "trailing", {"variance": "beta_tilde"}),
    ("vp-cos/ddim-eta0/100", VP("cosine"), ddim, 100, "trailing", {"eta": 0.0}),
    ("vp-cos/ddim-eta0-karras/50", VP("cosine"), ddim, 50, "karras", {"eta": 0.0}),
    ("edm/ddim-eta0-karras/50", EDM(), ddim, 50, "karras", {"eta": 0.0}),
    ("ve/ddim-eta0-karras/100", VE(), ddim, 100, "karras", {"eta": 0.0}),
]


@pytest.mark.parametrize("case", DIST_CASES, ids=[c[0] for c in DIST_CASES])
def test_samples_follow_the_mixture(gmm, reference, case):
    _, process, sampler, steps, spacing, options = case
    ref_ll, ref_mass = reference
    oracle = OracleDenoiser(gmm, process)
    g = gen(2024)
    x = process.prior((M, 2), g, dtype=F64)
    out = sampler(oracle, x, timesteps(process, steps, spacing), generator=g, **options)
    assert out.shape == (M, 2) and out.dtype == F64 and bool(torch.isfinite(out).all())
    assert oracle.calls == steps
    ll = gmm.log_prob(out)
    se = float(ll.std()) / math.sqrt(M)
    assert abs(float(ll.mean()) - ref_ll) < Z * se, (float(ll.mean()), ref_ll, se)
    frac = torch.bincount(gmm.responsibilities(out).argmax(1), minlength=3).double() / M
    se_mass = (ref_mass * (1 - ref_mass) / M).sqrt()
    assert bool(((frac - ref_mass).abs() < Z * se_mass).all()), (frac, ref_mass)
    # first moment of the mixture
    mean = torch.tensor((W[:, None] * MU).sum(0))
    var = torch.tensor((W[:, None] * (SD[:, None] ** 2 + MU**2)).sum(0)) - mean**2
    assert bool(((out.mean(0) - mean).abs() < Z * (var / M).sqrt()).all())


def test_true_samples_pass_the_same_check(gmm, reference):
    """The statistic itself: true mixture draws agree with the quadrature reference."""
    ref_ll, ref_mass = reference
    x, _ = gmm.sample(M, gen(7))
    ll = gmm.log_prob(x)
    assert abs(float(ll.mean()) - ref_ll) < Z * float(ll.std()) / math.sqrt(M)
    frac = torch.bincount(gmm.responsibilities(x).argmax(1), minlength=3).double() / M
    assert bool(((frac - ref_mass).abs() < Z * (ref_mass * (1 - ref_mass) / M).sqrt()).all())


@pytest.mark.parametrize("process", [DDPM(1000, "cosine"), VP("linear"), EDM()], ids=["ddpm", "vp", "edm"])
def test_ddim_eta1_is_ancestral_beta_tilde(gmm, process):
    """Song et al. 2021, eq. 16: eta = 1 makes DDIM's step the DDPM posterior step, so with the
    same generator seed the two samplers draw identical trajectories."""
    oracle = OracleDenoiser(gmm, process)
    ts = timesteps(process, 25, "trailing")
    x = process.prior((64, 2), gen(1), dtype=F64)
    a = ddim(oracle, x, ts, eta=1.0, generator=gen(5))
    b = ddpm(oracle, x, ts, variance="beta_tilde", generator=gen(5))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# DDIM = Euler on the probability-flow ODE: determinism and first-order convergence
# --------------------------------------------------------------------------------------------

def _levels(process, n, t_end, grid):
    if grid == "uniform-t":
        return torch.linspace(1, t_end, n + 1, dtype=F64)
    return log_sigma_levels(process, n, t_end)


CONV_CASES = [("edm-uniform-t(karras)", EDM(), 0.1, "uniform-t"),
              ("vp-linear-uniform-t", VP("linear"), 0.05, "uniform-t"),
              ("ddpm-cosine-uniform-t", DDPM(1000, "cosine"), 0.05, "uniform-t"),
              ("ve-uniform-t", VE(), 0.3, "uniform-t"),
              ("vp-cosine-log-sigma", VP("cosine"), 0.1, "log-sigma")]


@pytest.mark.parametrize("case", CONV_CASES, ids=[c[0] for c in CONV_CASES])
def test_ddim_first_order_convergence_to_pf_ode(gmm, case):
    _, process, t_end, grid = case
    b = 16
    x = process.prior((b, 2), gen(3), dtype=F64)
    a1, s1 = (float(v) for v in process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    ae, se = (float(v) for v in process.alpha_sigma(torch.tensor(t_end, dtype=F64)))
    ref = solve_pf_ode((x / a1).numpy(), s1 / a1, se / ae)
    oracle = OracleDenoiser(gmm, process)
    steps = [10, 20, 40, 80]
    errors = []
    for n in steps:
        ts = _levels(process, n, t_end, grid)
        out = ddim(oracle, x, ts)  # ts ends at t_end > 0: returns x_{t_end}, not x0_hat
        errors.append(float(np.abs(out.numpy() / ae - ref).max()))
    slope = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    assert 0.8 < -slope < 1.2, (slope, errors)


def test_ddim_eta0_is_deterministic(gmm):
    process = VP("cosine")
    oracle = OracleDenoiser(gmm, process)
    x = process.prior((32, 2), gen(0), dtype=F64)
    ts = timesteps(process, 20)
    state = torch.random.get_rng_state()
    a = ddim(oracle, x, ts)
    b = ddim(oracle, x.clone(), ts, generator=gen(1))
    c = ddim(oracle, x.clone(), ts, generator=gen(2))
    assert torch.equal(a, b) and torch.equal(b, c)
    assert torch.equal(torch.random.get_rng_state(), state)


# --------------------------------------------------------------------------------------------
# Randomness: the caller's generator, only
# --------------------------------------------------------------------------------------------

RNG_PROCESSES = [DDPM(100), VP("cosine"), VE(), EDM()]


@pytest.mark.parametrize("process", RNG_PROCESSES, ids=["ddpm", "vp", "ve", "edm"])
def test_random_draws_use_only_the_callers_generator(gmm, process):
    oracle = OracleDenoiser(gmm, process)
    ts = timesteps(process, 10)
    draws = {
        "prior": lambda g: process.prior((16, 2), g, dtype=F64),
        "sample_t": lambda g: process.sample_t(64, g),
        "ddpm": lambda g: ddpm(oracle, torch.ones(16, 2, dtype=F64), ts, generator=g),
        "ddpm-beta": lambda g: ddpm(oracle, torch.ones(16, 2, dtype=F64), ts, generator=g, variance="beta"),
        "ddim-eta0.5": lambda g: ddim(oracle, torch.ones(16, 2, dtype=F64), ts, generator=g, eta=0.5),
        "gmm.sample": lambda g: gmm.sample(16, g)[0],
    }
    for name, draw in draws.items():
        state = torch.random.get_rng_state()
        a, b, c = draw(gen(10)), draw(gen(10)), draw(gen(11))
        assert torch.equal(torch.random.get_rng_state(), state), f"{name} consumed the global RNG"
        assert torch.equal(a, b), f"{name}: same seed, different draws"
        assert not torch.equal(a, c), f"{name}: different seeds, same draws"


# --------------------------------------------------------------------------------------------
# Step schedules
# --------------------------------------------------------------------------------------------

def test_ddpm_timesteps_exact_levels():
    p = DDPM(1000)
    trailing = timesteps(p, 50, "trailing")
    assert torch.equal(trailing, torch.tensor(np.arange(1000, -1, -20) / 1000))
    linspace = timesteps(p, 50, "linspace")
    n = (np.round(np.linspace(0, 999, 50)) + 1)[::-1]  # diffusers' "linspace", 1-based
    assert torch.equal(linspace, torch.tensor(np.concatenate([n, [0]]) / 1000))
    leading = timesteps(p, 50, "leading")
    assert torch.equal(leading, torch.tensor(np.concatenate([np.arange(981, 0, -20), [0]]) / 1000))
    assert float(leading[0]) == 0.981 and float(leading[-2]) == 0.001
    # every step when steps == N
    assert torch.equal(timesteps(p, 1000), torch.arange(1000, -1, -1, dtype=F64) / 1000)


ALL_PROCESSES = [DDPM(1000, "linear"), DDPM(100, "cosine"), VP("linear"), VP("cosine"), VE(), EDM()]


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=["ddpm-lin", "ddpm-cos100", "vp-lin", "vp-cos", "ve", "edm"])
@pytest.mark.parametrize("spacing", ["trailing", "linspace", "leading", "karras", "logsnr"])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_every_schedule_decreases_to_zero(process, spacing, steps):
    if spacing == "leading" and not isinstance(process, DDPM):
        with pytest.raises(ValueError, match="'leading' spacing is defined for discrete DDPM"):
            timesteps(process, steps, spacing)
        return
    ts = timesteps(process, steps, spacing)
    assert ts.dtype == F64 and ts.shape == (steps + 1,)
    assert float(ts[-1]) == 0.0 and float(ts[0]) <= 1.0 and float(ts[-2]) > 0
    assert bool((ts.diff() < 0).all())
    check_ts(ts)
    if isinstance(process, DDPM) and spacing in ("trailing", "linspace", "leading"):
        big_n = process.num_steps
        assert torch.equal(ts, torch.round(ts * big_n) / big_n)  # the trained steps n / N
    if spacing in ("trailing",) or (spacing == "linspace" and steps > 1):
        assert float(ts[0]) == 1.0


def test_continuous_spacings_formulas():
    p = VP("cosine")
    torch.testing.assert_close(timesteps(p, 4, "trailing"),
                               torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=F64))
    torch.testing.assert_close(timesteps(p, 3, "linspace"),
                               torch.tensor([1.0, (1 + p.t_min) / 2, p.t_min, 0.0], dtype=F64))
    # karras: sigma/alpha at the levels is the rho = 7 ladder from min(s(1), 80) (or s(1) with
    # sigma_max=None) to the smallest trained level; VP-linear reaches s(1) = 152, EDM 80, VE 50
    for proc in (EDM(), VP("linear"), VE(), DDPM(1000, "cosine")):
        for cap in (80.0, None):
            ts = timesteps(proc, 12, "karras", sigma_max=cap)
            a, s = proc.alpha_sigma(ts[:-1])
            n, lo = 12, proc.sigma_min()
            hi = proc.sigma_max() if cap is None else min(cap, proc.sigma_max())
            want = [(hi ** (1 / 7) + i / (n - 1) * (lo ** (1 / 7) - hi ** (1 / 7))) ** 7 for i in range(n)]
            np.testing.assert_allclose((s / a).numpy(), want, rtol=1e-7)
            assert (float(ts[0]) == 1.0) == (hi == proc.sigma_max())
    # logsnr: evenly spaced in lambda from lambda at s = min(s(1), 80) to lambda(t_min)
    for cap, lam_top in ((None, float(p.log_snr(torch.tensor(1.0, dtype=F64)))), (80.0, -2 * math.log(80))):
        ts = timesteps(p, 9, "logsnr", sigma_max=cap)
        lam = p.log_snr(ts[:-1])
        torch.testing.assert_close(lam.diff(), torch.full((8,), float(lam[1] - lam[0]), dtype=F64),
                                   rtol=1e-7, atol=1e-7)
        assert float(lam[0]) == pytest.approx(lam_top, abs=1e-6)
        assert float(ts[-2]) == pytest.approx(p.t_min, rel=1e-7)


def test_user_levels_and_bad_inputs():
    p = DDPM(1000)
    torch.testing.assert_close(timesteps(p, 3, [0.9, 0.5, 0.2]),
                               torch.tensor([0.9, 0.5, 0.2, 0.0], dtype=F64))
    torch.testing.assert_close(timesteps(p, 3, [1.0, 0.5, 0.0]), torch.tensor([1.0, 0.5, 0.0], dtype=F64))
    bad = [(dict(steps=0), "steps must be >= 1"), (dict(steps=-3), "steps must be >= 1"),
           (dict(steps=1001), "only 1000"), (dict(steps=10, spacing="cosine"), "unknown spacing 'cosine'"),
           (dict(steps=3, spacing=[0.2, 0.5]), "must decrease strictly"),
           (dict(steps=3, spacing=[1.5, 0.5]), "must decrease strictly"),
           (dict(steps=3, spacing=[0.5, 0.5, 0.1]), "must decrease strictly"),
           (dict(steps=3, spacing=[]), "non-empty list")]
    for kw, message in bad:
        with pytest.raises(ValueError, match=message):
            timesteps(p, **kw)
    with pytest.raises(ValueError, match="'leading' spacing is defined for discrete DDPM"):
        timesteps(VP(), 5, "leading")
    for ts, message in (([0.5], "at least 2 levels"), ([[1.0, 0.5]], "at least 2 levels"),
                        ([0.5, 0.7, 0.0], "decrease strictly"), ([1.2, 0.5, 0.0], "decrease strictly"),
                        ([1.0, 0.5, -0.1], "decrease strictly")):
        with pytest.raises(ValueError, match=message):
            check_ts(torch.tensor(ts, dtype=F64))
    oracle = OracleDenoiser(GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0), p)
    with pytest.raises(ValueError, match=r"eta in \[0, 1\]"):
        ddim(oracle, torch.zeros(2, 2, dtype=F64), timesteps(p, 5), eta=1.5)
    with pytest.raises(ValueError, match="unknown variance 'huge'"):
        ddpm(oracle, torch.zeros(2, 2, dtype=F64), timesteps(p, 5), variance="huge")


@pytest.mark.parametrize("sampler,options", [(ddpm, {}), (ddpm, {"variance": "beta"}), (ddim, {"eta": 0.0}),
                                             (ddim, {"eta": 0.7})], ids=["ddpm", "ddpm-beta", "ddim", "ddim-eta"])
@pytest.mark.parametrize("process", [DDPM(1000), VP("cosine"), EDM()], ids=["ddpm", "vp", "edm"])
def test_last_step_returns_x0_hat(gmm, sampler, options, process):
    """With ts ending in 0 the result is the denoiser's x0_hat at the last level, and the callback
    sees every level in order (one network evaluation per step)."""
    oracle = OracleDenoiser(gmm, process)
    ts = timesteps(process, 12)
    seen = []
    out = sampler(oracle, process.prior((50, 2), gen(0), dtype=F64), ts, generator=gen(1),
                  callback=seen.append, **options)
    assert [d["i"] for d in seen] == list(range(12))
    assert [d["t"] for d in seen] == ts[:-1].tolist()
    assert oracle.calls == 12
    assert torch.equal(seen[-1]["x0_hat"], out)
    torch.testing.assert_close(out, oracle(seen[-1]["x"], ts[-2]).x0, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# reverse_step variances
# --------------------------------------------------------------------------------------------

def test_reverse_step_variances_are_beta_and_beta_tilde():
    """Ho et al. 2020, sec. 3.2: sigma_n^2 = beta_n or beta_tilde_n for adjacent DDPM steps; the
    first step's beta_tilde_1 = 0 is replaced by beta_tilde_2 (documented clipping); 'learned'
    interpolates log-variances with f = (v + 1) / 2 (Nichol & Dhariwal 2021, eq. 15)."""
    big_n = 1000
    p = DDPM(big_n, "linear")
    beta = np.linspace(1e-4, 0.02, big_n)
    ab = np.concatenate([[1.0], np.cumprod(1 - beta)])
    n = np.array([1, 2, 3, 100, 500, 999, 1000])
    b_n = beta[n - 1]
    tilde = (1 - ab[n - 1]) / (1 - ab[n]) * b_n
    tilde[0] = (1 - ab[1]) / (1 - ab[2]) * beta[1]
    g = gen(4)
    xt = torch.randn(len(n), 3, generator=g, dtype=F64)
    x0_hat = torch.randn(len(n), 3, generator=g, dtype=F64)
    t, s = torch.tensor(n / big_n), torch.tensor((n - 1) / big_n)
    v = torch.tensor([[-1.0], [1.0], [0.0], [0.5], [-0.3], [1.0], [-1.0]], dtype=F64).expand(len(n), 3)
    pred = Prediction(x0_hat, (xt - x0_hat) / 2, v)  # eps is not used by the step
    mean_tilde = (np.sqrt(ab[n - 1]) * b_n / (1 - ab[n]))[:, None] * x0_hat.numpy() + \
        (np.sqrt(1 - b_n) * (1 - ab[n - 1]) / (1 - ab[n]))[:, None] * xt.numpy()
    for variance, want in [("beta", b_n), ("beta_tilde", tilde)]:
        mean, log_var = reverse_step(p, pred, xt, t, s, variance)
        np.testing.assert_allclose(mean.numpy(), mean_tilde, rtol=1e-8, atol=1e-12)
        np.testing.assert_allclose(log_var.exp().expand(len(n), 3)[:, 0].numpy(), want, rtol=1e-7)
    _, log_var = reverse_step(p, pred, xt, t, s, "learned")
    f = (v[:, 0].numpy() + 1) / 2
    np.testing.assert_allclose(log_var[:, 0].numpy(), f * np.log(b_n) + (1 - f) * np.log(tilde), rtol=1e-8)
    # scalar levels (as the sampler passes them)
    mean, log_var = reverse_step(p, pred, xt, torch.tensor(0.5, dtype=F64), torch.tensor(0.499, dtype=F64),
                                 "beta_tilde")
    assert float(log_var.exp().flatten()[0]) == pytest.approx(tilde[4], rel=1e-7)
    with pytest.raises(ValueError, match="needs a denoiser built with learn_variance=True"):
        reverse_step(p, Prediction(x0_hat, x0_hat), xt, t, s, "learned")
    with pytest.raises(ValueError, match="unknown variance 'fixedlarge'"):
        reverse_step(p, pred, xt, t, s, "fixedlarge")


def test_ancestral_step_variance_monte_carlo(gmm):
    """One sampler step from a fixed x_t: the spread of x_s is sqrt(beta) or sqrt(beta_tilde)."""
    big_n = 1000
    p = DDPM(big_n, "linear")
    beta = np.linspace(1e-4, 0.02, big_n)
    ab = np.concatenate([[1.0], np.cumprod(1 - beta)])
    n = 3  # beta_tilde_3 / beta_3 ~ 2/3: the two choices are far apart here
    tilde = (1 - ab[n - 1]) / (1 - ab[n]) * beta[n - 1]
    oracle = OracleDenoiser(gmm, p)
    reps = 40000
    x = torch.full((reps, 2), 0.3, dtype=F64)
    ts = torch.tensor([n / big_n, (n - 1) / big_n], dtype=F64)
    for variance, var in [("beta", beta[n - 1]), ("beta_tilde", tilde)]:
        # ts ends at (n-1)/N > 0, so one stochastic step is taken
        out = ddpm(oracle, x, ts, variance=variance, generator=gen(8))
        assert bool((out.var(0) - var).abs().lt(Z * var * math.sqrt(2 / reps)).all()), (variance, out.var(0), var)
