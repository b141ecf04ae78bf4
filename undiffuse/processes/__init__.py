"""Gaussian forward processes: how data is noised at level t (``gaussian.py``: DDPM, VP, VE, EDM;
``schedules.py``: the beta / alpha_bar schedules). The cold degradations of Bansal et al. 2022 live
in ``undiffuse.cold.degradations``; ``undiffuse.cold.is_cold(spec)`` tells which family a spec names.
"""
from .gaussian import DDPM, EDM, VE, VP, GaussianProcess, bcast, from_config, karras_sigmas, make_process
from .schedules import SCHEDULES, alpha_bar_fn, discrete_betas


__all__ = ["GaussianProcess", "DDPM", "VP", "VE", "EDM", "karras_sigmas", "bcast", "from_config", "make_process",
           "SCHEDULES", "alpha_bar_fn", "discrete_betas"]
