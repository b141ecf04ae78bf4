"""Gaussian forward processes: ``x_t = alpha(t) x0 + sigma(t) eps`` with ``t`` in [0, 1].

Every process here answers the same questions (``alpha``, ``sigma``, ``log_snr``, ``corrupt``,
``posterior``, ``prior``, ``sample_t``), so samplers, losses and metrics never ask which one they
hold. Conventions (see docs/conventions.md):

* ``t = 0`` is the data itself for every process (``alpha = 1, sigma = 0``); ``t = 1`` is the prior.
* VP: ``alpha^2 + sigma^2 = 1``; VE: ``alpha = 1``.
* The discrete DDPM with ``N`` steps is step ``n`` at ``t = n / N`` (Ho et al. 2020).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..preconditioning import noise_label
from .schedules import alpha_bar_fn, discrete_betas

__all__ = ["GaussianProcess", "DDPM", "VP", "VE", "EDM", "karras_sigmas", "bcast", "from_config", "make_process"]


def bcast(v: Tensor | float, x: Tensor) -> Tensor:
    """Shape a per-sample (B,) or scalar quantity to broadcast against ``x`` of shape (B, ...)."""
    v = torch.as_tensor(v, dtype=x.dtype, device=x.device)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


class GaussianProcess:
    """Base class. Subclasses define ``alpha_sigma(t)``; everything else follows from it."""

    kind = "vp"  # "vp" or "ve": what the prior looks like
    #: The row of Karras et al. 2022, Table 1 whose c_noise is the time input of eps / x0 / v
    #: networks (``undiffuse.preconditioning``): 1000 t here.
    label_row = "vp"
    #: Smallest t the training loss draws (continuous processes avoid sigma = 0 exactly).
    t_min = 1e-5

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def alpha(self, t: Tensor) -> Tensor:
        return self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))[0]

    def sigma(self, t: Tensor) -> Tensor:
        return self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))[1]

    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2) (Kingma et al. 2021, eq. 2): decreasing in t."""
        a, s = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return 2 * (torch.log(a) - torch.log(s))

    def sigma_max(self) -> float:
        """The largest noise-to-signal ratio sigma/alpha the process reaches (at t = 1)."""
        a, s = self.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
        return float(s / a)

    def sigma_min(self) -> float:
        """The smallest positive sigma/alpha the training loss sees (at ``t_min``)."""
        a, s = self.alpha_sigma(torch.tensor(self.t_min, dtype=torch.float64))
        return float(s / a)

    # --- the forward process -------------------------------------------------------------------

    def corrupt(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw from q(x_t | x0) = N(alpha(t) x0, sigma(t)^2 I) (Ho et al. 2020, eq. 4)."""
        a, s = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64, device=x0.device))
        return bcast(a, x0) * x0 + bcast(s, x0) * noise

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
              t: float | Tensor = 1.0) -> Tensor:
        """A draw from the prior p(x_t) ~= q(x_t) at the level where sampling starts (t = 1 by
        default): N(0, I) for VP, N(0, sigma(t)^2 I) for VE (the data's own variance neglected)."""
        s = self.sigma(torch.as_tensor(t, dtype=torch.float64))
        scale = float(s) if self.kind == "ve" else 1.0
        return scale * torch.randn(shape, generator=generator, device=device, dtype=dtype)

    def transition(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """alpha_{t|s}, sigma_{t|s}^2 of q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I), s < t.

        Kingma et al. 2021 (VDM), eq. 3-4: alpha_{t|s} = alpha_t / alpha_s and
        sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2. For adjacent DDPM steps these are
        sqrt(alpha_n) and beta_n.
        """
        a_t, s_t = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        a_s, s_s = self.alpha_sigma(torch.as_tensor(s, dtype=torch.float64))
        a_ts = a_t / a_s
        return a_ts, (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)

    def posterior(self, x0: Tensor, xt: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_s | x_t, x0) for s < t (Ho et al. 2020, eq. 6-7; VDM eq. 13).

        mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0,
        var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2   (beta_tilde for adjacent DDPM steps).
        """
        a_ts, var_ts = self.transition(t, s)
        _, s_t = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        a_s, s_s = self.alpha_sigma(torch.as_tensor(s, dtype=torch.float64))
        coef_xt = a_ts * s_s**2 / s_t**2
        coef_x0 = a_s * var_ts / s_t**2
        mean = bcast(coef_xt, xt) * xt + bcast(coef_x0, x0) * x0
        return mean, self.posterior_variance(t, s)

    def posterior_variance(self, t: Tensor, s: Tensor) -> Tensor:
        """Variance of q(x_s | x_t, x0): sigma_{t|s}^2 sigma_s^2 / sigma_t^2 (beta_tilde)."""
        _, var_ts = self.transition(t, s)
        _, s_t = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        _, s_s = self.alpha_sigma(torch.as_tensor(s, dtype=torch.float64))
        return var_ts * s_s**2 / s_t**2

    # --- time -----------------------------------------------------------------------------------

    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
        """Training-time levels: uniform on [t_min, 1] (discrete processes override)."""
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        return self.t_min + (1 - self.t_min) * u

    def t_from_log_snr(self, lam: Tensor, iters: int = 64) -> Tensor:
        """Invert the decreasing map t -> lambda(t) by bisection (exact to float64 rounding)."""
        lam = torch.as_tensor(lam, dtype=torch.float64)
        lo = torch.zeros_like(lam)
        hi = torch.ones_like(lam)
        for _ in range(iters):
            mid = (lo + hi) / 2
            above = self.log_snr(mid) > lam  # still too little noise: move right
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (lo + hi) / 2

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """The t at which sigma(t)/alpha(t) equals ``sigma`` (0 maps to 0)."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        t = self.t_from_log_snr(-2 * torch.log(sigma.clamp_min(1e-300)))
        return torch.where(sigma > 0, t, torch.zeros_like(t))

    def noise_label(self, t: Tensor) -> Tensor:
        """What the network's time embedding sees at level t: ``preconditioning.noise_label``, the
        c_noise of the Table-1 row named by ``label_row`` (kept here for callers)."""
        return noise_label(self, t)

    def config(self) -> dict:
        raise NotImplementedError


class DDPM(GaussianProcess):
    """Discrete DDPM (Ho et al. 2020) with ``num_steps`` steps: beta_n, alpha_n = 1 - beta_n,
    alpha_bar_n = prod_{i <= n} alpha_i, and step n at t = n / N.

    Between grid points alpha_bar is interpolated linearly in t, so that non-uniform step
    schedules (Karras, log-SNR) can visit fractional steps, as k-diffusion does.
    """

    kind = "vp"

    def __init__(self, num_steps: int = 1000, schedule: str = "linear"):
        self.num_steps = int(num_steps)
        self.schedule = schedule
        self.betas = discrete_betas(schedule, self.num_steps)
        self.alphas = 1 - self.betas
        # alpha_bar[0] = 1 is the data; alpha_bar[n] for n = 1..N as in the paper.
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(self.alphas, 0)])
        self.t_min = 1.0 / self.num_steps

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        n = torch.as_tensor(t, dtype=torch.float64).clamp(0, 1) * self.num_steps
        lo = n.floor().long().clamp(max=self.num_steps - 1)
        frac = n - lo
        table = self.alpha_bar.to(n.device)
        return table[lo] * (1 - frac) + table[lo + 1] * frac

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        ab = self.alpha_bar_at(t)
        return ab.sqrt(), (1 - ab).clamp_min(0).sqrt()

    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
        """Uniform over the steps 1..N (Ho et al. 2020, Algorithm 1), returned as t = n / N."""
        steps = torch.randint(1, self.num_steps + 1, (n,), generator=generator, device=device)
        return steps.to(torch.float64) / self.num_steps

    def config(self) -> dict:
        return {"type": "ddpm", "num_steps": self.num_steps, "schedule": self.schedule}


class VP(GaussianProcess):
    """Continuous variance-preserving process (Song et al. 2021): alpha = sqrt(alpha_bar(t)).

    ``schedule`` is "linear" (beta(t) from 0.1 to 20, the continuous limit of DDPM's 1e-4..0.02),
    "cosine" (Nichol & Dhariwal 2021) or "sigmoid" (Jabri et al. 2022); see ``schedules.py``.
    """

    kind = "vp"
    t_min = 1e-3  # Song et al. 2021 train and sample down to eps = 1e-3 (1e-5 for likelihoods)

    def __init__(self, schedule: str = "linear"):
        self.schedule = schedule
        self._alpha_bar = alpha_bar_fn(schedule)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        ab = self._alpha_bar(torch.as_tensor(t, dtype=torch.float64).clamp(0, 1))
        return ab.sqrt(), (1 - ab).clamp_min(0).sqrt()

    def config(self) -> dict:
        return {"type": "vp", "schedule": self.schedule}


class VE(GaussianProcess):
    """Variance-exploding process (Song & Ermon 2019; Song et al. 2021, eq. 30): alpha = 1 and
    sigma(t) = sigma_min (sigma_max / sigma_min)^t for t > 0, sigma(0) = 0 (the data)."""

    kind = "ve"
    label_row = "ve"  # ln sigma, floored at sigma_min (NCSN++, Song et al. 2021, appendix C)

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.s_min, self.s_max = float(sigma_min), float(sigma_max)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        s = self.s_min * (self.s_max / self.s_min) ** t
        return torch.ones_like(t), torch.where(t > 0, s, torch.zeros_like(s))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        t = torch.log(sigma.clamp_min(self.s_min) / self.s_min) / math.log(self.s_max / self.s_min)
        return torch.where(sigma > 0, t, torch.zeros_like(t))

    def config(self) -> dict:
        return {"type": "ve", "sigma_min": self.s_min, "sigma_max": self.s_max}


class EDM(GaussianProcess):
    """The EDM process of Karras et al. 2022: alpha = 1, sigma(t) on the rho-ladder (eq. 5)
    sigma(t) = (sigma_max^(1/rho) t + sigma_min^(1/rho) (1 - t))^rho for t > 0, and training
    levels with ln sigma ~ N(P_mean, P_std^2) (Table 1)."""

    kind = "ve"
    label_row = "edm"  # c_noise = ln(sigma) / 4 (Table 1)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                 p_mean: float = -1.2, p_std: float = 1.2):
        self.s_min, self.s_max, self.rho = float(sigma_min), float(sigma_max), float(rho)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64)
        r = 1 / self.rho
        s = (self.s_max**r * t + self.s_min**r * (1 - t)) ** self.rho
        return torch.ones_like(t), torch.where(t > 0, s, torch.zeros_like(s))

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        r = 1 / self.rho
        t = (sigma.clamp(self.s_min, self.s_max) ** r - self.s_min**r) / (self.s_max**r - self.s_min**r)
        return torch.where(sigma > 0, t, torch.zeros_like(t))

    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> Tensor:
        ln_sigma = self.p_mean + self.p_std * torch.randn(n, generator=generator, device=device,
                                                          dtype=torch.float64)
        return self.t_from_sigma(ln_sigma.exp()).clamp_min(1e-6)

    def config(self) -> dict:
        return {"type": "edm", "sigma_min": self.s_min, "sigma_max": self.s_max, "rho": self.rho,
                "p_mean": self.p_mean, "p_std": self.p_std}


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """The EDM noise ladder (Karras et al. 2022, eq. 5): n levels from sigma_max down to
    sigma_min, evenly spaced in sigma^(1/rho), followed by sigma = 0."""
    i = torch.arange(n, dtype=torch.float64)
    r = 1 / rho
    ramp = sigma_max**r + i / max(n - 1, 1) * (sigma_min**r - sigma_max**r)
    return torch.cat([ramp**rho, torch.zeros(1, dtype=torch.float64)])


def from_config(cfg: dict) -> GaussianProcess:
    """Rebuild a process from ``process.config()`` (as saved in a run directory)."""
    cfg = dict(cfg)
    kind = cfg.pop("type")
    classes = {"ddpm": DDPM, "vp": VP, "ve": VE, "edm": EDM}
    if kind not in classes:
        raise ValueError(f"unknown Gaussian process type {kind!r}; expected one of {sorted(classes)}")
    return classes[kind](**cfg)


def make_process(spec: str | dict | GaussianProcess) -> GaussianProcess:
    """A process from a short spec: "ddpm[:schedule[:N]]", "vp[:schedule]", "ve", "edm", or a
    config dict. Examples: "ddpm:cosine:1000", "vp:linear", "edm"."""
    if isinstance(spec, GaussianProcess):
        return spec
    if isinstance(spec, dict):
        return from_config(spec)
    kind, *rest = spec.split(":")
    if kind == "ddpm":
        schedule = rest[0] if rest else "linear"
        return DDPM(int(rest[1]) if len(rest) > 1 else 1000, schedule)
    if kind == "vp":
        return VP(rest[0] if rest else "linear")
    if kind in ("ve", "edm") and not rest:
        return VE() if kind == "ve" else EDM()
    raise ValueError(f"cannot read process spec {spec!r}; examples: 'ddpm:cosine:1000', "
                     "'vp:linear', 've', 'edm'")
