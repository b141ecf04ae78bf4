"""Step schedules against exact answers: DPM-Solver++'s lower-order final steps, and each sampler's
default spacing.

The problem is ``undiffuse.testing.exact.sharp_mixture()`` (16 dimensions, 8 components of std
0.03-0.3) on a linear-beta DDPM, the denoiser its exact oracle; errors are the RMS distance to the
exact probability-flow ODE solution (deterministic samplers) or the gap between the samples' mean
exact log-density and the mixture's E_p[log p] (stochastic samplers). The numbers quoted below
are ``bench/spacing_defaults.py``'s (1,024 ODE points, 4,000 samples); these tests use fewer.
"""
from __future__ import annotations

import pytest

import torch

from undiffuse.processes import DDPM, EDM, VE
from undiffuse.samplers import SAMPLERS, SPACINGS, dpmpp_2m, dpmpp_3m, timesteps
from undiffuse.samplers.dpm_solver import step_orders
from undiffuse.testing import OracleDenoiser
from undiffuse.testing.exact import (exact_flow, flow_velocity, likelihood_gap, mean_excess, mixture_log_likelihood,
                                     ode_error, sharp_mixture)

GMM = sharp_mixture()
LINEAR = DDPM(1000, "linear")


def test_exact_flow_is_the_oracles_probability_flow():
    """The reference the ODE errors are measured against: its velocity is the oracle's eps_hat in the
    scaled variables (a VE process, x = x~), and at s = 0 it stops moving (eps_hat -> 0 as s -> 0)."""
    process = VE()
    x = 3 * torch.randn(64, GMM.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s in (0.05, 1.0, 20.0):
        t = process.t_from_sigma(torch.tensor(s, dtype=torch.float64))
        torch.testing.assert_close(flow_velocity(GMM, x, s), OracleDenoiser(GMM, process)(x, t).eps,
                                   rtol=1e-9, atol=1e-12)
    assert float(flow_velocity(GMM, x, 0.0).abs().max()) == 0.0
    end = exact_flow(GMM, x[:4], 20.0)
    assert float((end - exact_flow(GMM, exact_flow(GMM, x[:4], 20.0, 1.0), 1.0)).abs().max()) < 1e-7


@pytest.mark.parametrize("order", [2, 3])
def test_lower_order_final_step_orders(order):
    """Where the solve ends at the process's smallest level (linspace: ..., 112, 1, 0 of 1000 at 10
    steps) its last step is first order and the one before at most second; the step to 0 is x0_hat
    (first order) either way. On trailing the step into 0 is the solve's last, so the cap falls on
    the step before it (diffusers' lower_order_final with final_sigmas_type="zero"). A ladder that
    stops above 0 keeps full order; lower_order_final=False keeps only the warm-up."""
    full = [min(order, i + 1) for i in range(10)]
    lin, trail = timesteps(LINEAR, 10, "linspace"), timesteps(LINEAR, 10, "trailing")
    assert float(lin[-2]) == LINEAR.t_min and float(trail[-2]) == 0.1
    if order == 2:
        assert step_orders(LINEAR, lin, 2, True) == [1, 2, 2, 2, 2, 2, 2, 2, 1, 1]
        assert step_orders(LINEAR, trail, 2, True) == [1, 2, 2, 2, 2, 2, 2, 2, 2, 1]
    else:
        assert step_orders(LINEAR, lin, 3, True) == [1, 2, 3, 3, 3, 3, 3, 2, 1, 1]
        assert step_orders(LINEAR, trail, 3, True) == [1, 2, 3, 3, 3, 3, 3, 3, 2, 1]
    assert step_orders(LINEAR, lin, order, False) == full[:9] + [1]
    assert step_orders(LINEAR, lin[:-1], order, True) == full[:9]   # stops at t_min: a partial solve
    for spacing in ("karras", "logsnr", "leading"):                  # these end at t_min too
        ts = timesteps(LINEAR, 10, spacing)
        assert step_orders(LINEAR, ts, order, True)[-2:] == [1, 1], spacing


# ODE error (RMS over 256 points) at 5, 8, 10, 14, 20, 50 steps, measured with lower_order_final:
# dpmpp_2m
#   trailing 0.774 0.593 0.582 0.195 0.151 0.077    linspace 1.023 0.627 0.571 0.407 0.131 0.055
#   leading  0.658 0.584 0.572 0.403 0.124 0.055    karras   1.400 0.750 0.620 0.531 0.383 0.006
#   logsnr   1.675 0.923 0.632 0.520 0.468 0.005
# dpmpp_3m
#   trailing 0.680 0.327 0.244 0.195 0.148 0.076    linspace 0.979 0.384 0.231 0.180 0.127 0.054
#   leading  0.616 0.482 0.218 0.168 0.121 0.054    karras   1.249 0.595 0.635 0.302 0.063 0.004
#   logsnr   1.605 0.772 0.404 0.227 0.023 0.004
# Without it, linspace: 2M 3.57 1.83 1.06 0.47 0.11 0.06, 3M 13.5 14.3 10.3 3.94 0.60 0.07 (3M's error
# grows from 5 to 8 steps); diffusers' threshold (lower only below 15 steps) gives 3M on linspace 0.18
# at 14 steps and 0.60 at 20. 8 steps is not asserted: 3M on Karras errs 0.595 there and 0.635 at 10,
# a difference of one point landing on another component (each adds ~0.35 to the RMS of 256).
STEPS = [5, 10, 14, 20, 50]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("sampler", [dpmpp_2m, dpmpp_3m], ids=["2m", "3m"])
def test_dpm_solver_error_falls_as_steps_grow(sampler, spacing):
    errors = [ode_error(sampler, LINEAR, GMM, timesteps(LINEAR, n, spacing)) for n in STEPS]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors


@pytest.mark.parametrize("spacing", ["linspace", "leading"])
def test_without_lower_order_final_the_long_last_step_diverges(spacing):
    """The regression the option fixes: 3M on linspace / leading, 10 steps, 10.3 / 8.0 without
    against 0.23 / 0.22 with."""
    ts = timesteps(LINEAR, 10, spacing)
    with_it = ode_error(dpmpp_3m, LINEAR, GMM, ts)
    without = ode_error(dpmpp_3m, LINEAR, GMM, ts, lower_order_final=False)
    assert with_it < 0.35 and without > 5.0, (with_it, without)


# --------------------------------------------------------------------------------------------
# Default spacings
# --------------------------------------------------------------------------------------------

# FID-style scores on the retrained MNIST demo model (300 samples, NFE 10 and 20; Heun: 9 and 19),
# docs/spacing_mnist.json.
MNIST = {
    "ddim": {"trailing": (11.32, 9.23), "linspace": (12.62, 9.57), "karras": (20.96, 11.90), "logsnr": (18.95, 11.68)},
    "ddpm": {"trailing": (8.91, 7.29), "linspace": (9.51, 7.35), "karras": (16.15, 8.15), "logsnr": (13.16, 8.42)},
    "heun": {"trailing": (14063, 14937), "linspace": (11563, 16316), "karras": (50.81, 9.01), "logsnr": (59.48, 9.26)},
    "heun_sde": {"trailing": (13201, 1700), "linspace": (10889, 5315), "karras": (75.28, 9.54), "logsnr": (81.92, 11.04)},
    "dpmpp_2m": {"trailing": (9.25, 8.34), "linspace": (9.84, 8.48), "karras": (8.31, 8.44), "logsnr": (8.41, 8.56)},
    "dpmpp_2m_sde": {"trailing": (6.70, 6.54), "linspace": (6.79, 6.60), "karras": (6.41, 5.76), "logsnr": (7.76, 6.92)},
    "dpmpp_3m": {"trailing": (9.54, 8.30), "linspace": (10.52, 8.37), "karras": (13.27, 9.60), "logsnr": (12.54, 8.95)},
    "dpmpp_3m_sde": {"trailing": (7.23, 6.85), "linspace": (7.22, 6.92), "karras": (20.64, 10.49), "logsnr": (28.12, 7.85)},
    "pc": {"trailing": (14.56, 9.41), "linspace": (19.48, 9.97), "karras": (85.87, 17.75), "logsnr": (56.32, 14.60)},
}
# Mean excess |gap| - best |gap| (nats) of each sampler's default over 10/20/50 steps and the three
# processes (bench/spacing_defaults.py, docs/samplers.md).
MEASURED_EXCESS = {"ddpm": 2.89, "ddim": 3.39, "heun": 1.43, "heun_sde": 3.29,
                   "dpmpp_2m": 0.09, "dpmpp_2m_sde": 0.60, "dpmpp_3m": 0.34, "dpmpp_3m_sde": 2.46, "langevin": 0.63,
                   "pc": 3.50}
PROCESSES = {"ddpm:linear": LINEAR, "ddpm:cosine": DDPM(1000, "cosine"), "edm": EDM()}


def test_identical_samplers_share_a_default():
    """euler is ddim (eta = 0) and euler_ancestral is ddpm, step for step (test_samplers_ode.py)."""
    assert SAMPLERS["euler"].spacing == SAMPLERS["ddim"].spacing
    assert SAMPLERS["euler_ancestral"].spacing == SAMPLERS["ddpm"].spacing


@pytest.fixture(scope="module")
def reference():
    return mixture_log_likelihood(GMM)


def _excess(name: str, reference: float) -> dict[str, float]:
    """bench/spacing_defaults.py's numbers, recomputed: the same samples (4,000, seed 0)."""
    cells = {}
    for proc, process in PROCESSES.items():
        for steps in (10, 20, 50):
            cells[proc, steps] = {}
            for spacing in SPACINGS:
                if spacing == "leading" and proc == "edm":
                    continue
                gap, _ = likelihood_gap(SAMPLERS[name], process, GMM, timesteps(process, steps, spacing), reference,
                                        n=4000)
                cells[proc, steps][spacing] = abs(gap)
    return mean_excess(cells)


@pytest.mark.parametrize("name", list(MEASURED_EXCESS))
def test_default_spacing_is_the_best_the_mnist_model_allows(name, reference):
    """The rule of docs/samplers.md, "Default schedules": a spacing is a candidate if the MNIST model
    scores within 10 % of the default's at both budgets (langevin, hopeless on MNIST, was not run
    there: every spacing is a candidate). No candidate may beat the default on the exact mixture by
    more than 0.5 nats of mean excess; and the default's own excess stays near the measured one.
    Where the mixture prefers a spacing the MNIST model does not, the default stays: ddim and ddpm
    (trailing; the mixture prefers log-SNR by ~3 nats, MNIST trailing by 1.5-2x FID at 10 NFE), pc,
    heun / heun_sde (Karras), dpmpp_3m (log-SNR; MNIST prefers trailing)."""
    excess = _excess(name, reference)
    default = SAMPLERS[name].spacing
    mnist = MNIST.get(name)
    candidates = [s for s in excess if mnist is None or
                  all(m <= 1.1 * d for m, d in zip(mnist[s], mnist[default]))]
    assert default in candidates
    assert excess[default] <= min(excess[s] for s in candidates) + 0.5, (default, excess)
    assert excess[default] == pytest.approx(MEASURED_EXCESS[name], abs=0.3), excess
