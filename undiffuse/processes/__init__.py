"""Forward processes: how data is degraded at level t.

Gaussian processes (``gaussian.py``: DDPM, VP, VE, EDM) add noise; the cold degradations of Bansal
et al. 2022 (``cold/``: blur, mask, pixelate, desaturate, snow, fade, gaussian) apply any transform
with integer severities. ``is_cold(spec)`` tells which family a spec or config names.
"""
from .cold import DEGRADATIONS, Degradation, degradation_from_config, make_degradation
from .gaussian import DDPM, EDM, VE, VP, GaussianProcess, bcast, from_config, karras_sigmas, make_process
from .schedules import SCHEDULES, alpha_bar_fn, discrete_betas


def is_cold(spec) -> bool:
    """Whether ``spec`` (a spec string such as "blur:T=20", a config dict or a process object)
    names a cold degradation rather than a Gaussian process."""
    if isinstance(spec, Degradation):
        return True
    if isinstance(spec, dict):
        return spec.get("type") in DEGRADATIONS
    if isinstance(spec, str):
        return spec.split(":", 1)[0].strip() in DEGRADATIONS
    return False


__all__ = ["GaussianProcess", "DDPM", "VP", "VE", "EDM", "karras_sigmas", "bcast", "from_config", "make_process",
           "SCHEDULES", "alpha_bar_fn", "discrete_betas", "is_cold", "DEGRADATIONS", "Degradation",
           "make_degradation", "degradation_from_config"]
