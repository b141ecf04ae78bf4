"""Noise schedules: alpha_bar(t) on [0, 1] for the continuous VP process and beta_n for DDPM.

* linear  — Ho et al. 2020: beta_n from 1e-4 to 0.02 over N = 1000 steps (rescaled by 1000 / N for
  other N, as in Nichol & Dhariwal 2021); its continuous limit is beta(t) = 0.1 + 19.9 t
  (Song et al. 2021), alpha_bar(t) = exp(-(0.1 t + 9.95 t^2)).
* cosine  — Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0),
  f(t) = cos^2(pi/2 (t + s) / (1 + s)), s = 0.008; discrete betas clipped at 0.999.
* sigmoid — Jabri et al. 2022 (RIN) / Chen 2023, Algorithm 1 with start -3, end 3, tau 1:
  alpha_bar(t) = (sig(end/tau) - sig((t (end - start) + start)/tau)) / (sig(end/tau) - sig(start/tau)).
  (diffusers' "sigmoid" beta schedule, from GeoDiff, is a different curve.)

Continuous cosine and sigmoid reach alpha_bar = 0 at t = 1; we floor alpha_bar at
``ALPHA_BAR_MIN`` (log-SNR >= -20) so that eps-predicting models stay finite there, the
continuous counterpart of clipping beta at 0.999.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

ALPHA_BAR_MIN = 2.0611536e-9  # sigmoid(-20): log-SNR floor of -20
COSINE_S = 0.008
SCHEDULES = ("linear", "cosine", "sigmoid")


def _linear(t: Tensor, beta_min: float = 0.1, beta_max: float = 20.0) -> Tensor:
    return torch.exp(-(beta_min * t + 0.5 * (beta_max - beta_min) * t**2))


def _cosine(t: Tensor, s: float = COSINE_S) -> Tensor:
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(torch.zeros_like(t))


def _sigmoid(t: Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> Tensor:
    # float64 constants: float32 ones leave alpha_bar(0) = 1 - 8e-9 (sigma(0) != 0) and alpha_bar(1) = 8e-9.
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=torch.float64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=torch.float64))
    v = torch.sigmoid((t * (end - start) + start) / tau)
    return (v_end - v) / (v_end - v_start)


_RAW = {"linear": _linear, "cosine": _cosine, "sigmoid": _sigmoid}


def _check(schedule: str) -> None:
    if schedule not in _RAW:
        raise ValueError(f"unknown noise schedule {schedule!r}; choose one of {SCHEDULES}")


def alpha_bar_fn(schedule: str) -> Callable[[Tensor], Tensor]:
    """alpha_bar(t) for the continuous VP process, floored at ALPHA_BAR_MIN."""
    _check(schedule)
    raw = _RAW[schedule]
    return lambda t: raw(t.to(torch.float64)).clamp(ALPHA_BAR_MIN, 1.0)


def discrete_betas(schedule: str, num_steps: int, max_beta: float = 0.999) -> Tensor:
    """beta_1..beta_N (float64) for a DDPM with ``num_steps`` steps."""
    _check(schedule)
    if num_steps < 1:
        raise ValueError(f"a DDPM needs at least one step, got num_steps={num_steps}")
    if schedule == "linear":
        scale = 1000.0 / num_steps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    ab = _RAW[schedule](t)
    # Nichol & Dhariwal 2021, eq. 17 and below: beta_n = 1 - alpha_bar_n / alpha_bar_{n-1}, clipped.
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)
