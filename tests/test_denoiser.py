"""Parameterizations (eps / x0 / v / EDM), conversions and the Denoiser's wiring.

The networks here are dummies that return the exact training target computed in the test from
known (x0, eps), so a Denoiser that wires a parameterization wrongly returns the wrong x0 / eps.
Expected values come from the papers' formulas written out here (Karras et al. 2022 Table 1,
Salimans & Ho 2022), never from the code under test.
"""
from __future__ import annotations

import math

import pytest
import torch

from helpers_denoiser import F64, SHAPE, T, TargetNet, _setup, edm_coefficients, exact_target, gen
from undiffuse.denoiser import (Denoiser, Prediction, eps_from_x0, score_from_eps, v_from,
                                x0_eps_from_v, x0_from_eps)
from undiffuse.processes import DDPM, EDM, VE, VP


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


PROCESSES = [DDPM(1000, "cosine"), DDPM(1000, "linear"), VP("linear"), VE(), EDM()]
PIDS = ["ddpm-cos", "ddpm-lin", "vp-lin", "ve", "edm"]


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
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        Denoiser(TargetNet(eps), process, "score")


def test_clip_x0_in_eval_mode():
    process = VP("cosine")
    x0, eps, alpha, sigma, xt = _setup(process)
    x0_big = 3 * x0
    den = Denoiser(TargetNet(x0_big), process, "x0", clip_x0=1.0).eval()
    pred = den(xt, T)
    torch.testing.assert_close(pred.x0, x0_big.clamp(-1, 1))
    torch.testing.assert_close(pred.eps, (xt - alpha * x0_big.clamp(-1, 1)) / sigma)
