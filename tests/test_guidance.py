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
