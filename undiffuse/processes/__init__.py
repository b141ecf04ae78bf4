"""Forward processes: how data is degraded at level t."""
from .gaussian import DDPM, EDM, VE, VP, GaussianProcess, bcast, from_config, karras_sigmas, make_process
from .schedules import SCHEDULES, alpha_bar_fn, discrete_betas

__all__ = ["GaussianProcess", "DDPM", "VP", "VE", "EDM", "karras_sigmas", "bcast", "from_config", "make_process",
           "SCHEDULES", "alpha_bar_fn", "discrete_betas"]
