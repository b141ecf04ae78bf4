"""Probability-flow ODE solvers against the exact Gaussian-mixture ODE.

* Convergence order: each solver's terminal error against the PF-ODE solved by scipy (DOP853,
  tol 1e-10, right-hand side written independently in numpy: helpers_mixture) shrinks at its
  theoretical order. The slope of log(error) against log(steps) is fitted on a grid uniform in
  log(sigma / alpha), on processes with smooth schedules:
  Euler 1 +- 0.1, Heun 2 +- 0.2 (steps 20..160), DPM-Solver++(2M) 2 +- 0.25 and (3M) 3 +- 0.4
  (steps 80..320: multistep methods reach their asymptotic rate later; measured slopes 1.8-1.95
  and 3.0-3.3).
* Identities, to float64 rounding: DDIM(eta = 0) = Euler; DDIM(eta) = Euler ancestral(eta); the
  first step of DPM-Solver++ = DDIM; its SDE variant's first step at eta = 1 = DDPM's posterior step;
  eta = 0 SDE variants = the ODE solvers.
* The reference solver (``reference_ode``) against the independent scipy solution.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from undiffuse.processes import DDPM, EDM, VE, VP
from undiffuse.samplers import (SAMPLERS, ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde,
                                euler, euler_ancestral, heun, reference_ode, timesteps)
from undiffuse.testing import OracleDenoiser

from helpers_mixture import F64, gen, log_sigma_levels, mixture, solve_pf_ode

GMM = mixture()
SMOOTH = [("vp-cosine", VP("cosine"), 0.1), ("edm", EDM(), 0.1), ("ve", VE(), 0.3)]


def terminal_errors(process, t_end, sampler, steps, b=16):
    x = process.prior((b, 2), gen(3), dtype=F64)
    a1, s1 = (float(v) for v in process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    ae, se = (float(v) for v in process.alpha_sigma(torch.tensor(t_end, dtype=F64)))
    ref = solve_pf_ode((x / a1).numpy(), s1 / a1, se / ae)
    oracle = OracleDenoiser(GMM, process)
    return [float(np.abs(sampler(oracle, x, log_sigma_levels(process, n, t_end)).numpy() / ae - ref).max())
            for n in steps]


ORDERS = [(euler, [20, 40, 80, 160], 1.0, 0.1), (heun, [20, 40, 80, 160], 2.0, 0.2),
          (dpmpp_2m, [80, 160, 320], 2.0, 0.25), (dpmpp_3m, [80, 160, 320], 3.0, 0.4)]


@pytest.mark.parametrize("case", SMOOTH, ids=[c[0] for c in SMOOTH])
@pytest.mark.parametrize("solver", ORDERS, ids=[o[0].__name__ for o in ORDERS])
def test_convergence_order(case, solver):
    _, process, t_end = case
    sampler, steps, order, tol = solver
    errors = terminal_errors(process, t_end, sampler, steps)
    slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert all(e2 < e1 for e1, e2 in zip(errors, errors[1:])), errors
    assert abs(slope - order) < tol, (slope, errors)


def test_higher_order_solvers_are_more_accurate_at_equal_cost():
    """At 40 network evaluations on VP-cosine: Euler > Heun (20 steps) > 2M > 3M in error."""
    process, t_end = VP("cosine"), 0.1
    err = {name: terminal_errors(process, t_end, fn, [n])[0]
           for name, fn, n in [("euler", euler, 40), ("heun", heun, 20), ("2m", dpmpp_2m, 40),
                               ("3m", dpmpp_3m, 40)]}
    assert err["euler"] > err["heun"] > err["2m"] > err["3m"], err


@pytest.mark.parametrize("process", [VP("linear"), EDM(), VE()], ids=["vp", "edm", "ve"])
def test_reference_solver_matches_independent_scipy(process):
    t_end = 0.1
    x = process.prior((8, 2), gen(5), dtype=F64)
    a1, s1 = (float(v) for v in process.alpha_sigma(torch.tensor(1.0, dtype=F64)))
    ae, se = (float(v) for v in process.alpha_sigma(torch.tensor(t_end, dtype=F64)))
    want = solve_pf_ode((x / a1).numpy(), s1 / a1, se / ae, tol=1e-11) * ae
    oracle = OracleDenoiser(GMM, process)
    got = reference_ode(oracle, x, torch.tensor([1.0, t_end], dtype=F64), rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-8)
    # ending at 0: x0_hat at the last positive level
    ts = torch.tensor([1.0, t_end, 0.0], dtype=F64)
    torch.testing.assert_close(reference_ode(oracle, x, ts, rtol=1e-11, atol=1e-11), oracle(got, t_end).x0,
                               rtol=0, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Identities
# --------------------------------------------------------------------------------------------

PROCESSES = [DDPM(1000, "cosine"), DDPM(1000, "linear"), VP("linear"), EDM(), VE()]
IDS = ["ddpm-cos", "ddpm-lin", "vp", "edm", "ve"]


def _ts(process, n=17):
    # an irregular schedule, stopping above 0 (so the last step is a real update)
    return timesteps(process, n, "logsnr")[:-2]


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_ddim_is_euler_in_scaled_variables(process):
    """Song et al. 2021, eq. 14: DDIM's update is Euler's method on dx~/ds = eps_hat."""
    oracle = OracleDenoiser(GMM, process)
    x = process.prior((64, 2), gen(0), dtype=F64)
    torch.testing.assert_close(ddim(oracle, x, _ts(process)), euler(oracle, x, _ts(process)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_ddim_eta_is_euler_ancestral_eta(process, eta):
    """k-diffusion's ancestral step (down to s_down, noise up to s) is DDIM's eq. 12 with c =
    eta sqrt(posterior variance) in the scaled variables: same generator, same trajectory."""
    oracle = OracleDenoiser(GMM, process)
    x = process.prior((64, 2), gen(0), dtype=F64)
    a = ddim(oracle, x, _ts(process), eta=eta, generator=gen(4))
    b = euler_ancestral(oracle, x, _ts(process), eta=eta, generator=gen(4))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_first_order_dpm_solver_steps(process):
    """One step of DPM-Solver++ is DDIM (Lu et al. 2022, sec. 3.2); one step of its SDE variant at
    eta = 1 is DDPM's posterior step q(x_s | x_t, x0_hat) (same noise)."""
    oracle = OracleDenoiser(GMM, process)
    x = process.prior((64, 2), gen(0), dtype=F64)
    ts = torch.tensor([0.9, 0.4], dtype=F64)
    for solver in (dpmpp_2m, dpmpp_3m):
        torch.testing.assert_close(solver(oracle, x, ts), ddim(oracle, x, ts), rtol=1e-12, atol=1e-12)
    for solver in (dpmpp_2m_sde, dpmpp_3m_sde):
        torch.testing.assert_close(solver(oracle, x, ts, generator=gen(2)),
                                   ddpm(oracle, x, ts, generator=gen(2)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_sde_variants_at_eta_0_are_the_ode_solvers(process):
    oracle = OracleDenoiser(GMM, process)
    x = process.prior((64, 2), gen(0), dtype=F64)
    torch.testing.assert_close(dpmpp_2m_sde(oracle, x, _ts(process), eta=0.0), dpmpp_2m(oracle, x, _ts(process)),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dpmpp_3m_sde(oracle, x, _ts(process), eta=0.0), dpmpp_3m(oracle, x, _ts(process)),
                               rtol=1e-12, atol=1e-12)


def test_heun_churn_settings():
    """Algorithm 2 with S_churn = 0, or with [S_tmin, S_tmax] excluding every level, is Algorithm 1;
    with churn it is random (generator-determined) and costs 2 N - 1 evaluations."""
    process = EDM()
    oracle = OracleDenoiser(GMM, process)
    x = process.prior((64, 2), gen(0), dtype=F64)
    ts = timesteps(process, 12, "karras")
    plain = heun(oracle, x, ts)
    torch.testing.assert_close(heun(oracle, x, ts, s_churn=40, s_tmin=1e3, s_tmax=1e4, generator=gen(1)),
                               plain, rtol=0, atol=0)
    oracle.calls = 0
    a = heun(oracle, x, ts, s_churn=40, generator=gen(1))
    assert oracle.calls == 2 * 12 - 1 == SAMPLERS["heun_sde"].nfe(12, {})
    b = heun(oracle, x, ts, s_churn=40, generator=gen(1))
    c = heun(oracle, x, ts, s_churn=40, generator=gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)


def test_heun_churn_raises_the_level_by_gamma():
    """The first evaluation happens at s_hat = (1 + gamma) s_0, gamma = min(S_churn / N, sqrt 2 - 1)."""
    process = EDM()
    oracle = OracleDenoiser(GMM, process)
    ts = timesteps(process, 10, "karras")
    seen = []
    heun(oracle, process.prior((4, 2), gen(0), dtype=F64), ts, s_churn=2.0, s_tmax=100,
         generator=gen(1), callback=seen.append)
    s1 = float(process.sigma(ts[1]))
    assert process.sigma(torch.tensor(seen[1]["t"], dtype=F64)).item() == pytest.approx(s1 * 1.2, rel=1e-9)
    seen.clear()
    heun(oracle, process.prior((4, 2), gen(0), dtype=F64), ts, s_churn=100.0, s_tmax=100, s_tmin=1.0,
         generator=gen(1), callback=seen.append)
    # gamma capped at sqrt(2) - 1, and the level capped at the process's sigma_max = 80
    assert process.sigma(torch.tensor(seen[0]["t"], dtype=F64)).item() == pytest.approx(80.0, rel=1e-9)
    s2 = float(process.sigma(ts[2]))
    assert process.sigma(torch.tensor(seen[2]["t"], dtype=F64)).item() == pytest.approx(s2 * math.sqrt(2), rel=1e-9)
