"""Noise schedules of the Gaussian forward processes, checked against independent computations:
betas and alpha_bar, log-SNR / sigma / time maps, Karras sigmas, config round trips, the prior and
sample_t.

Every expected value here is computed from the papers' formulas written out afresh (numpy / math
in float64, see helpers_processes.py), never by calling the code under test a second time.
Monte-Carlo checks use seeded generators and 5-standard-error tolerances.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from helpers_processes import (F64, Z, chain_moments, pid, ref_betas, ref_cosine_alpha_bar,
                               ref_edm_sigma, ref_linear_betas, ref_sigmoid_alpha_bar, ref_ve_sigma)
from undiffuse.processes import DDPM, EDM, VE, VP, from_config, karras_sigmas
from undiffuse.processes.schedules import ALPHA_BAR_MIN, discrete_betas


def all_processes():
    return [DDPM(1000, "linear"), DDPM(1000, "cosine"), DDPM(1000, "sigmoid"), DDPM(50, "cosine"),
            VP("linear"), VP("cosine"), VP("sigmoid"), VE(), VE(0.002, 80.0), EDM(),
            EDM(0.01, 20.0, rho=5.0)]


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
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        DDPM(1000, "quadratic")
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        VP("quadratic")
    with pytest.raises(ValueError, match="needs at least one step, got num_steps=0"):
        discrete_betas("linear", 0)
    with pytest.raises(ValueError, match="VE needs 0 < sigma_min < sigma_max, got 1.0, 0.5"):
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
    with pytest.raises(ValueError, match="unknown Gaussian process type 'subvp'"):
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
