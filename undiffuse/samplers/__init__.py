"""Samplers: one function per algorithm, one shared signature (see ``base.py``).

``SAMPLERS`` maps each name to a ``SamplerInfo``: the function, its order of convergence on the
probability-flow ODE (None for samplers that do not solve it), whether it draws noise, how many
network evaluations ``steps`` steps cost, the options it is registered with, and its paper.
``undiffuse samplers`` prints this table.

Every sampler takes and returns x_t (``base.py``). The ODE/SDE samplers in sigma (``euler.py``: Euler,
Euler-ancestral, Heun; ``dpm_solver.py``: DPM-Solver++ 2M/3M and their SDE variants; ``reference.py``)
turn the denoiser once into Karras et al.'s ``D(x~, sigma)`` (``sigma.py``) and read like their
papers; DDPM (``ancestral.py``), DDIM (``ddim.py``) and Langevin / predictor-corrector (``score.py``)
step in x_t. Network preconditioning (Karras et al. 2022, Table 1) is ``undiffuse.preconditioning``.

The Cold Diffusion samplers (Bansal et al. 2022: naive, improved, direct) restore a degraded image
with a restorer ``R(x, t)``, a different signature: they live in ``undiffuse.cold.samplers``
(``COLD_SAMPLERS``), not in ``SAMPLERS``; ``undiffuse samplers --cold`` lists them.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from .ancestral import ddpm, reverse_step
from .base import check_ts, noise_like
from .ddim import ddim
from .dpm_solver import dpmpp_2m, dpmpp_2m_sde, dpmpp_3m, dpmpp_3m_sde
from .euler import euler, euler_ancestral, heun
from .reference import reference_ode
from .score import annealed_langevin, predictor_corrector
from .timesteps import SPACINGS, timesteps


@dataclass(frozen=True)
class SamplerInfo:
    fn: Callable
    order: int | None          # convergence order on the probability-flow ODE
    stochastic: bool
    paper: str
    nfe: Callable[[int, dict], int] | None = lambda steps, opts: steps  # None: adaptive
    options: dict = field(default_factory=dict)  # registered defaults, overridable by the caller
    spacing: str = "trailing"  # default step schedule: measured, docs/samplers.md "Default schedules"

    def __call__(self, denoiser, x, ts, **kwargs):
        known = inspect.signature(self.fn).parameters
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            options = [k for k, v in known.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]
            raise ValueError(f"{self.fn.__name__} has no option {', '.join(unknown)}; "
                             f"its options are {', '.join(options)}")
        return self.fn(denoiser, x, ts, **{**self.options, **kwargs})

    def steps_for_nfe(self, nfe: int, **options) -> int:
        """The most steps whose cost fits ``nfe`` network evaluations (at least 1)."""
        if self.nfe is None:
            raise ValueError("an adaptive solver has no fixed cost per step")
        opts = {**self.options, **options}
        steps = 1
        while self.nfe(steps + 1, opts) <= nfe:
            steps += 1
        return steps


# EDM's stochastic settings (Karras et al. 2022, Table 5, ImageNet-64 column).
EDM_CHURN = {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003}

SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(ddpm, None, True, "Ho et al. 2020, Algorithm 2"),
    "ddim": SamplerInfo(ddim, 1, False, "Song, Meng & Ermon 2021, eq. 12"),
    "euler": SamplerInfo(euler, 1, False, "Karras et al. 2022, eq. 4"),
    "euler_ancestral": SamplerInfo(euler_ancestral, None, True, "k-diffusion; Ho et al. 2020, eq. 7"),
    "heun": SamplerInfo(heun, 2, False, "Karras et al. 2022, Algorithm 1", lambda n, o: 2 * n - 1,
                        spacing="karras"),
    "heun_sde": SamplerInfo(heun, None, True, "Karras et al. 2022, Algorithm 2",
                            lambda n, o: 2 * n - 1, EDM_CHURN, spacing="karras"),
    "dpmpp_2m": SamplerInfo(dpmpp_2m, 2, False, "Lu et al. 2022 (DPM-Solver++), Algorithm 2",
                            spacing="logsnr"),
    "dpmpp_2m_sde": SamplerInfo(dpmpp_2m_sde, None, True, "Lu et al. 2022 (DPM-Solver++), sec. 5",
                                spacing="karras"),
    "dpmpp_3m": SamplerInfo(dpmpp_3m, 3, False, "Lu et al. 2022 (DPM-Solver++), eq. 9, 3rd order",
                            spacing="logsnr"),
    "dpmpp_3m_sde": SamplerInfo(dpmpp_3m_sde, None, True, "k-diffusion; Lu et al. 2022, sec. 5"),
    "langevin": SamplerInfo(annealed_langevin, None, True, "Song & Ermon 2019, Algorithm 1",
                            lambda n, o: n * o.get("n_steps_each", 5) + 1),
    "pc": SamplerInfo(predictor_corrector, None, True, "Song et al. 2021, Algorithms 2-5",
                      lambda n, o: n * (1 + o.get("corrector_steps", 1))),
    "reference": SamplerInfo(reference_ode, None, False, "scipy solve_ivp (DOP853), adaptive", None),
}


def get_sampler(name: str) -> SamplerInfo:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)} "
                         "(`undiffuse samplers` describes them)")
    return SAMPLERS[name]


__all__ = ["SAMPLERS", "SamplerInfo", "get_sampler", "ddpm", "ddim", "euler", "euler_ancestral",
           "heun", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m", "dpmpp_3m_sde", "annealed_langevin",
           "predictor_corrector", "reference_ode", "reverse_step", "timesteps", "SPACINGS",
           "check_ts", "noise_like", "COLD_SAMPLERS", "cold_sample", "GaussianMixturePrior",
           "iterative_denoise"]
