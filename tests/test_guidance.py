"""Classifier-free guidance against the exact class-conditional oracle (a labelled mixture)."""
import torch

from undiffuse.guidance import ClassifierFreeGuidance
from undiffuse.processes import DDPM
from undiffuse.testing import GaussianMixture, OracleDenoiser

GMM = GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]), torch.tensor([0.3, 0.5, 0.4]))
ORACLE = OracleDenoiser(GMM, DDPM(1000, "cosine"))
X = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
T = torch.tensor(0.5, dtype=torch.float64)
COND = torch.arange(64) % 3


def test_scale_one_is_conditional_and_zero_is_unconditional():
    cond = ORACLE(X, T, COND)
    uncond = ORACLE(X, T, torch.full((64,), 3))
    g1 = ClassifierFreeGuidance(ORACLE, 1.0, null_cond=3)(X, T, COND)
    g0 = ClassifierFreeGuidance(ORACLE, 0.0, null_cond=3)(X, T, COND)
    torch.testing.assert_close(g1.x0, cond.x0)
    torch.testing.assert_close(g0.x0, uncond.x0)
    torch.testing.assert_close(g0.eps, uncond.eps)


def test_guided_eps_is_the_extrapolation_of_eps():
    """eps = eps_u + w (eps_c - eps_u) (Ho & Salimans 2022), and x0 and eps stay consistent."""
    w = 3.0
    cond, uncond = ORACLE(X, T, COND), ORACLE(X, T, torch.full((64,), 3))
    guided = ClassifierFreeGuidance(ORACLE, w, null_cond=3)(X, T, COND)
    torch.testing.assert_close(guided.eps, uncond.eps + w * (cond.eps - uncond.eps))
    a, s = ORACLE.process.alpha_sigma(T)
    torch.testing.assert_close(X, a * guided.x0 + s * guided.eps)


def test_interval_outside_uses_the_conditional_prediction():
    cond = ORACLE(X, T, COND)
    guided = ClassifierFreeGuidance(ORACLE, 3.0, null_cond=3, interval=(100.0, 200.0))(X, T, COND)
    torch.testing.assert_close(guided.x0, cond.x0)


def test_sampling_with_guidance_concentrates_on_the_requested_component():
    """Two overlapping components (means -+0.5, std 0.5), 4000 samples asking for component 0,
    DPM-Solver++(2M), 30 steps. w = 1 reproduces the component: mean and std within 5 standard
    errors, and the fraction on its side of the boundary is Phi(1) = 0.841; larger w pushes that
    fraction up, monotonically, and narrows the samples (w = 0 is the mixture: 0.5)."""
    import math

    from undiffuse.samplers import dpmpp_2m, timesteps

    gmm = GaussianMixture(torch.tensor([[-0.5], [0.5]]), 0.5)
    process = DDPM(1000, "cosine")
    oracle = OracleDenoiser(gmm, process)
    ts = timesteps(process, 30, "logsnr")
    x = process.prior((4000, 1), torch.Generator().manual_seed(1), dtype=torch.float64, t=ts[0])
    cond = torch.zeros(4000, dtype=torch.long)
    frac, std = {}, {}
    for w in (0.0, 1.0, 2.0, 4.0):
        out = dpmpp_2m(ClassifierFreeGuidance(oracle, w, null_cond=2), x, ts, cond=cond)[:, 0]
        frac[w], std[w] = float((out < 0).double().mean()), float(out.std())
        if w == 1.0:
            se = 0.5 / math.sqrt(4000)
            assert abs(float(out.mean()) + 0.5) < 5 * se and abs(std[w] - 0.5) < 5 * 0.5 / math.sqrt(8000)
    phi1 = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    band = 5 * math.sqrt(phi1 * (1 - phi1) / 4000)
    assert abs(frac[1.0] - phi1) < band and abs(frac[0.0] - 0.5) < 5 * math.sqrt(0.25 / 4000)
    assert frac[0.0] < frac[1.0] < frac[2.0] < frac[4.0], frac
    assert std[1.0] > std[2.0] > std[4.0], std
