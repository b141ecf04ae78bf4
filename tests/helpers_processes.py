"""Independent reference formulas shared by test_schedules.py and test_processes.py.

The papers' schedule formulas written out afresh in numpy / math (float64) and the one-step chain
iterated by hand: never the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import torch

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


def pid(p) -> str:
    return "-".join(str(v) for v in p.config().values())
