"""Network preconditioning: one class per row of Karras et al. 2022 (EDM), Table 1.

In the scaled variables ``x~ = x_t / alpha`` and ``s = sigma / alpha`` every Gaussian process is
the variance-exploding one, ``x~ = x0 + s eps`` (eq. 4 and sec. 4), and a network F becomes the
denoiser (eq. 7)

    D(x~; s) = c_skip(s) x~ + c_out(s) F(c_in(s) x~; c_noise(s)).

Each row of Table 1 ("Network and preconditioning") is a class here: ``VPPrecond`` (Song et al.
2021's VP, c_noise = (M - 1) t(s)), ``VEPrecond`` (NCSN++, c_noise = ln(s / 2)) and ``EDMPrecond``.
The iDDPM row (c_noise = M - 1 - j, the index of the nearest trained level) is left out: undiffuse
trains no network on it.

How ``Denoiser`` uses them:

* ``prediction="edm"``: ``EDMPrecond(sigma_data)``, all four coefficients.
* "eps", "x0", "v": the outputs are converted in x_t (``denoiser.py``); the network's input is VP's
  c_in (x~ / sqrt(1 + s^2) = x_t / sqrt(alpha^2 + sigma^2)) and its time input is ``noise_label``:
  the c_noise of the row that the process names (``GaussianProcess.label_row``), with the constants
  undiffuse's saved runs were trained on: 1000 t for DDPM and VP (Table 1: 999 t), ln s floored at
  the process's sigma_min for VE (Table 1: ln(s / 2)), ln(s) / 4 for EDM (Table 1 exactly).

``noise_label`` is the one place a network's time input is computed.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["Preconditioner", "VPPrecond", "VEPrecond", "EDMPrecond", "label_row", "noise_label"]


class Preconditioner:
    """One row of Karras et al. 2022, Table 1: c_skip, c_out, c_in and c_noise as functions of
    ``s = sigma / alpha`` (a tensor; the results broadcast like it)."""

    def c_skip(self, s: Tensor) -> Tensor:
        raise NotImplementedError

    def c_out(self, s: Tensor) -> Tensor:
        raise NotImplementedError

    def c_in(self, s: Tensor) -> Tensor:
        raise NotImplementedError

    def c_noise(self, s: Tensor) -> Tensor:
        raise NotImplementedError

    def coefficients(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(c_skip, c_out, c_in, c_noise) at ``s``."""
        return self.c_skip(s), self.c_out(s), self.c_in(s), self.c_noise(s)

    def label(self, process, t: Tensor) -> Tensor:
        """c_noise at level ``t`` of ``process`` (float64)."""
        a, sig = process.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return self.c_noise(sig / a)


class VPPrecond(Preconditioner):
    """Table 1, VP: c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) t(s).

    ``t_of_s`` inverts the process's s(t); ``label_scale`` is M - 1 (999 in the table). At a known
    level t, ``label`` gives ``label_scale * t`` without the inversion (exact)."""

    def __init__(self, t_of_s: Callable[[Tensor], Tensor] | None = None, label_scale: float = 999.0):
        self.t_of_s, self.label_scale = t_of_s, float(label_scale)

    def c_skip(self, s: Tensor) -> Tensor:
        return torch.ones_like(s)

    def c_out(self, s: Tensor) -> Tensor:
        return -s

    def c_in(self, s: Tensor) -> Tensor:
        return 1 / (s**2 + 1).sqrt()

    def c_noise(self, s: Tensor) -> Tensor:
        if self.t_of_s is None:
            raise ValueError("VPPrecond.c_noise needs t_of_s, the inverse of the process's s(t): "
                             "pass VPPrecond(process.t_from_sigma)")
        return self.label_scale * self.t_of_s(s)

    def label(self, process, t: Tensor) -> Tensor:
        return self.label_scale * torch.as_tensor(t)


class VEPrecond(Preconditioner):
    """Table 1, VE: c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s / 2).

    ``label_scale`` is the table's 1/2; ``floor`` keeps c_noise finite at s = 0 (the data)."""

    def __init__(self, label_scale: float = 0.5, floor: float = 0.0):
        self.label_scale, self.floor = float(label_scale), float(floor)

    def c_skip(self, s: Tensor) -> Tensor:
        return torch.ones_like(s)

    def c_out(self, s: Tensor) -> Tensor:
        return s

    def c_in(self, s: Tensor) -> Tensor:
        return torch.ones_like(s)

    def c_noise(self, s: Tensor) -> Tensor:
        return torch.log(self.label_scale * s.clamp_min(self.floor))


class EDMPrecond(Preconditioner):
    """Table 1, EDM: c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
    c_in = 1 / sqrt(s^2 + sd^2), c_noise = ln(s) / 4, with sd = ``sigma_data``."""

    #: s below this gives c_noise of s = 1e-12, not -inf (s = 0 is the data, never a network input)
    S_FLOOR = 1e-12

    def __init__(self, sigma_data: float = 0.5):
        if not sigma_data > 0 or not math.isfinite(sigma_data):
            raise ValueError(f"EDM preconditioning needs sigma_data > 0, got {sigma_data}")
        self.sigma_data = sigma_data

    def c_skip(self, s: Tensor) -> Tensor:
        return self.sigma_data**2 / (s**2 + self.sigma_data**2)

    def c_out(self, s: Tensor) -> Tensor:
        return s * self.sigma_data / (s**2 + self.sigma_data**2).sqrt()

    def c_in(self, s: Tensor) -> Tensor:
        return 1 / (s**2 + self.sigma_data**2).sqrt()

    def c_noise(self, s: Tensor) -> Tensor:
        return torch.log(s.clamp_min(self.S_FLOOR)) / 4


def label_row(process) -> Preconditioner:
    """The Table-1 row whose c_noise labels time for the eps / x0 / v networks on ``process``,
    with undiffuse's constants (module docstring); the process names it in ``label_row``."""
    row = getattr(process, "label_row", "vp")
    if row == "vp":
        return VPPrecond(process.t_from_sigma, label_scale=1000.0)
    if row == "ve":
        return VEPrecond(label_scale=1.0, floor=process.s_min)
    if row == "edm":
        return EDMPrecond()
    raise ValueError(f"{type(process).__name__}.label_row is {row!r}; expected 'vp', 've' or 'edm'")


def noise_label(process, t: Tensor | float) -> Tensor:
    """What the network's time embedding sees at level ``t`` (in t's dtype): ``label_row``'s c_noise."""
    t = torch.as_tensor(t)
    return label_row(process).label(process, t).to(t.dtype)
