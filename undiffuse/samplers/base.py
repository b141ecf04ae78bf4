"""What every sampler shares: the signature, the noise draw, the per-step callback.

A sampler is one function
``sample(denoiser, x, ts, *, cond=None, generator=None, callback=None, **options) -> Tensor``:
``x`` is the starting state at level ``ts[0]`` (usually ``process.prior(...)``), ``ts`` the
decreasing levels to visit (``undiffuse.samplers.timesteps``). One network evaluation is made per
step from ``ts[i]`` to ``ts[i + 1]``; if ``ts[-1] == 0`` the result is the denoised x0 estimate.
``callback`` receives ``{"i", "t", "x", "x0_hat"}`` before each step's update.

The ODE samplers (Euler, Heun, DPM-Solver++, the reference solver) turn the denoiser once into
Karras et al.'s ``D(x~, sigma)`` (``sigma.py``) and loop over sigmas; DDPM, DDIM and
predictor-corrector step in x_t with ``run_steps``. ``scaled`` gives (alpha, sigma / alpha) at a level.
"""
from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import Tensor

from ..denoiser import Prediction

Callback = Callable[[dict], None]


class DenoiserLike(Protocol):
    process: object

    def __call__(self, xt: Tensor, t: Tensor, cond: Tensor | None = None) -> Prediction: ...


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """A standard normal draw shaped like ``x``, from the caller's generator only."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def check_ts(ts: Tensor) -> Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if ts.ndim != 1 or len(ts) < 2:
        raise ValueError(f"ts must be a 1-D sequence of at least 2 levels, got shape {tuple(ts.shape)}")
    if not bool((ts[1:] < ts[:-1]).all()) or float(ts[-1]) < 0 or float(ts[0]) > 1:
        raise ValueError(f"ts must decrease strictly within [0, 1], got {ts.tolist()}")
    return ts


def scaled(process, t: Tensor) -> tuple[Tensor, Tensor]:
    """alpha(t) and s(t) = sigma(t) / alpha(t) (float64), the EDM variables (Karras et al. 2022, eq. 4)."""
    a, sig = process.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
    return a, sig / a


def report(callback: Callback | None, i: int, t: Tensor, x: Tensor, pred: Prediction) -> None:
    if callback is not None:
        callback({"i": i, "t": float(t), "x": x, "x0_hat": pred.x0})


Step = Callable[[Tensor, Tensor, Tensor, Prediction], Tensor]


def run_steps(denoiser: DenoiserLike, x: Tensor, ts: Tensor, cond: Tensor | None,
              callback: Callback | None, step: Step) -> Tensor:
    """The loop every single-evaluation sampler shares: evaluate the denoiser at ``ts[i]``, report,
    then ``x = step(x, t, s, pred)`` towards ``s = ts[i + 1]``; the step into s = 0 returns x0_hat."""
    ts = check_ts(ts)
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        pred = denoiser(x, t, cond)
        report(callback, i, t, x, pred)
        x = pred.x0 if float(s) == 0 else step(x, t, s, pred)
    return x
