"""Samplers: one function per algorithm, one shared signature (see ``base.py``)."""
from .ancestral import ddpm, reverse_step
from .base import check_ts, noise_like
from .ddim import ddim
from .timesteps import SPACINGS, timesteps

SAMPLERS = {"ddpm": ddpm, "ddim": ddim}

__all__ = ["SAMPLERS", "ddpm", "ddim", "reverse_step", "timesteps", "SPACINGS", "check_ts",
           "noise_like"]
