"""Driving Hugging Face diffusers' schedulers beside undiffuse's samplers (tests/test_samplers_peer*.py).

The float64 patch, diffusers' documented sampling loop with the exact oracle as the eps model, and
the comparison of two lists of model calls. Import after ``pytest.importorskip("diffusers")``.
"""
from __future__ import annotations

import contextlib
import importlib
from unittest import mock

import numpy as np
import torch

from undiffuse.processes import DDPM
from undiffuse.testing import GaussianMixture

F64 = torch.float64
N = 1000
B = 8  # samples per trajectory
SCHEDULES = {
    "linear": dict(num_train_timesteps=N, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"),
    "cosine": dict(num_train_timesteps=N, beta_schedule="squaredcos_cap_v2"),
}
PROCESSES = {"linear": DDPM(N, "linear"), "cosine": DDPM(N, "cosine")}
GMM = GaussianMixture(torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]]), torch.tensor([0.3, 0.6, 0.45]),
                      torch.tensor([0.5, 0.3, 0.2]))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Driving diffusers
# --------------------------------------------------------------------------------------------

class _Float64Names:
    """Stands in for a module (torch or numpy) whose ``float32`` is float64."""

    def __init__(self, module, float64):
        self._module, self.float32 = module, float64

    def __getattr__(self, name):
        return getattr(self._module, name)


@contextlib.contextmanager
def float64_diffusers(cls):
    """Run ``cls``'s scheduler module in float64: its own code, with float32 read as float64
    (tables, the per-step state casts and the noise dtype alike). Construct, set_timesteps and step
    inside the block."""
    module = importlib.import_module(cls.__module__)
    with mock.patch.object(module, "torch", _Float64Names(torch, torch.float64)), \
            mock.patch.object(module, "np", _Float64Names(np, np.float64)):
        yield


def precision(cls, wide: bool):
    return float64_diffusers(cls) if wide else contextlib.nullcontext()


def make(cls, schedule: str = "linear", **config):
    return cls(**SCHEDULES[schedule], **config)


def run_diffusers(sched, oracle, latents, *, generator=None, noises=None, level="timestep", **step_kw):
    """Diffusers' documented loop with the oracle as the eps model. Returns the final sample and
    every model call as (level, model input). ``level``: "timestep" asks the oracle at (n + 1) / N
    (a network conditioned on the timestep); "sigma" at the level whose sigma/alpha is the scheduler's
    current sigma (a network conditioned on sigma, as in EDM)."""
    calls, x = [], latents
    for i, t in enumerate(sched.timesteps):
        model_in = sched.scale_model_input(x, t)
        if level == "sigma":
            lvl = oracle.process.t_from_sigma(sched.sigmas[i])
        else:
            lvl = torch.tensor((float(t) + 1) / N, dtype=F64)
        calls.append((float(lvl), model_in.clone()))
        kw = dict(step_kw)
        if generator is not None:
            kw["generator"] = generator
        if noises is not None:
            kw["variance_noise"] = noises[i]
        x = sched.step(oracle(model_in, lvl).eps, t, x, **kw).prev_sample
    return x, calls


class Recorder:
    """The oracle, logging every call as (level, input, x0_hat): our side of the comparison."""

    def __init__(self, oracle):
        self.oracle, self.process, self.calls = oracle, oracle.process, []

    def __call__(self, x, t, cond=None):
        pred = self.oracle(x, t, cond)
        self.calls.append((float(t), x.clone(), pred.x0))
        return pred


def levels_of(sched) -> list[float]:
    return [(float(t) + 1) / N for t in sched.timesteps]


def assert_same_calls(calls_a, calls_b, atol: float) -> float:
    """The two lists of model calls are made at the same levels (exactly) on inputs within ``atol``;
    returns the largest input difference."""
    level_gap, x_gap = max_gap(calls_a, calls_b)
    assert level_gap == 0.0, level_gap
    assert x_gap < atol, x_gap
    return x_gap


def max_gap(calls_a, calls_b) -> tuple[float, float]:
    """Largest level difference and largest input difference over two lists of model calls."""
    assert len(calls_a) == len(calls_b), (len(calls_a), len(calls_b))
    dl = max(abs(a[0] - b[0]) for a, b in zip(calls_a, calls_b))
    dx = max(float((a[1] - b[1]).abs().max()) for a, b in zip(calls_a, calls_b))
    return dl, dx
