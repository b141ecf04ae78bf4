"""Gaussian noise through the cold interface, so hot and cold diffusion fit in one table
(Bansal et al. 2022 run their samplers on noise too: the "Denoise" runs of their code).

    D(x0, t) = sqrt(alpha_bar(t/T)) x0 + sqrt(1 - alpha_bar(t/T)) eps,

computed by undiffuse's own ``DDPM`` process (``processes.gaussian``) at the level t / T, with
``eps`` the state: drawn once per image from the generator and reused by every call, so that the
cold samplers' ``D(x0_hat, s)`` and ``D(x0_hat, s - 1)`` share the noise (the paper's "fixed noise"
routine, ``x0_step_down``). By default the DDPM has T steps (levels on its grid) and the cosine
schedule, as the paper's noise experiments (T = 200, cosine betas in the official code).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...processes.gaussian import DDPM
from .base import Degradation, State


class GaussianNoise(Degradation):
    """DDPM's forward process with integer severities (see the module docstring).

    Args:
        num_steps: T (paper: 200).
        schedule: "linear", "cosine" (default) or "sigmoid" betas of the wrapped DDPM.
        ddpm_steps: the DDPM's own number of steps N (default T); t maps to the level t / T.
        seed: seed of the noise drawn when no generator is given.
    """

    name = "gaussian"

    def __init__(self, num_steps: int = 200, schedule: str = "cosine", ddpm_steps: int | None = None,
                 seed: int = 0):
        super().__init__(num_steps, seed)
        self.schedule = schedule
        self.ddpm_steps = None if ddpm_steps is None else int(ddpm_steps)
        self.process = DDPM(self.ddpm_steps or self.num_steps, schedule)

    @property
    def random(self) -> bool:
        return True

    def draw_state(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, Tensor]:
        return {"noise": torch.randn(shape, generator=generator, device=generator.device)}

    def apply(self, x0: Tensor, t: Tensor, state: State) -> Tensor:
        noise = state["noise"].to(x0)
        if noise.shape != x0.shape:
            raise ValueError(f"gaussian: the state's noise has shape {tuple(noise.shape)}, "
                             f"the batch {tuple(x0.shape)}")
        level = t.to(torch.float64) / self.num_steps
        return self.process.corrupt(x0, level, noise)

    def prior(self, shape, generator=None, device="cpu", dtype=torch.float32):
        """x_T for eps ~ N(0, I) (the data's share sqrt(alpha_bar_T) x0 neglected), and its state."""
        state = self.sample_state(shape, generator, device, dtype)
        sigma = float(self.process.sigma(torch.tensor(1.0)))
        return sigma * state["noise"], state
