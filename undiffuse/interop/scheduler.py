"""undiffuse's DDPM process and denoiser settings <-> diffusers' DDPMScheduler / DDIMScheduler config.

The levels line up as in tests/test_samplers_peer.py: our DDPM step n of N (level t = n / N) is
diffusers' 0-based timestep n - 1, with the same betas ("linear": 1e-4..0.02 scaled by 1000 / N, as
diffusers' beta_start / beta_end; "cosine": "squaredcos_cap_v2"; "sigmoid", another curve than
diffusers' "sigmoid", as explicit trained_betas). Only the discrete DDPM maps: diffusers'
DDPM/DDIM schedulers hold a table of N betas, which VP (continuous), VE and EDM (sigma ladders,
EDM's preconditioning) are not.
"""
from __future__ import annotations

import torch

from ..processes import DDPM, GaussianProcess, discrete_betas
from .diffusers_unet import DIFFUSERS_VERSION, InteropError, check_settings

__all__ = ["PREDICTIONS", "SCHEDULERS", "scheduler_to_diffusers", "scheduler_from_diffusers"]

#: Our prediction -> diffusers' prediction_type.
PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
#: Scheduler class -> the pipeline that samples with it.
SCHEDULERS = {"DDIMScheduler": "DDIMPipeline", "DDPMScheduler": "DDPMPipeline"}
#: Betas of undiffuse's schedules equal diffusers' float32 tables to this (measured: 1.4e-9 linear,
#: 2.2e-8 cosine; tests/test_samplers_peer.py); trained_betas further off are another schedule.
BETA_ATOL = 1e-7


def _betas_config(process: DDPM) -> dict:
    n = process.num_steps
    if process.schedule == "linear":
        return {"beta_schedule": "linear", "beta_start": 1e-4 * 1000 / n, "beta_end": 0.02 * 1000 / n,
                "trained_betas": None}
    if process.schedule == "cosine":
        return {"beta_schedule": "squaredcos_cap_v2", "trained_betas": None}
    return {"beta_schedule": "linear", "trained_betas": process.betas.tolist()}  # trained_betas wins


def scheduler_to_diffusers(process: GaussianProcess, denoiser: dict, cls: str) -> dict:
    """``cls``'s scheduler_config.json for a run's process and "denoiser" entry (refusing what no
    diffusers DDPM/DDIM scheduler computes)."""
    if not isinstance(process, DDPM):
        raise InteropError(f"process {process.config()['type']!r}: diffusers' DDPMScheduler and DDIMScheduler "
                           "hold N discrete betas; only undiffuse's 'ddpm' process is one (VP is continuous, VE "
                           "and EDM are sigma ladders with their own preconditioning)")
    prediction = denoiser["prediction"]
    if prediction not in PREDICTIONS:
        raise InteropError(f"prediction {prediction!r}: the EDM preconditioning (c_skip, c_out, c_in, c_noise) has "
                           f"no prediction_type in diffusers' DDPM/DDIM schedulers (they know {sorted(PREDICTIONS)})")
    if denoiser["learn_variance"]:
        raise InteropError("learn_variance=true: the learned-variance output is not exported (DDIMScheduler has no "
                           "learned variance; DDPMScheduler's learned_range was not checked against ours)")
    clip = denoiser["clip_x0"]
    cfg = {"_class_name": cls, "_diffusers_version": DIFFUSERS_VERSION, "num_train_timesteps": process.num_steps,
           **_betas_config(process), "prediction_type": PREDICTIONS[prediction],
           "clip_sample": clip is not None, "clip_sample_range": 1.0 if clip is None else clip,
           "thresholding": False, "timestep_spacing": "trailing", "steps_offset": 0,
           "rescale_betas_zero_snr": False}
    if cls == "DDIMScheduler":
        cfg["set_alpha_to_one"] = True  # the last step returns x0_hat, as our samplers do
    else:
        cfg["variance_type"] = "fixed_small"
    return cfg


#: Scheduler settings that change the maths, and the only value we can take.
FIXED = {"thresholding": False, "rescale_betas_zero_snr": False}
#: Inference-time choices (undiffuse picks them per draw: --sampler, --spacing) and settings read below.
IGNORED = {"timestep_spacing", "steps_offset", "set_alpha_to_one", "variance_type", "dynamic_thresholding_ratio",
           "sample_max_value", "clip_sample_range", "num_train_timesteps", "beta_schedule", "beta_start",
           "beta_end", "trained_betas", "prediction_type", "clip_sample"}


def scheduler_from_diffusers(c: dict, where: str) -> tuple[dict, dict]:
    """(our process config, our "denoiser" entry) for a scheduler_config.json at ``where``."""
    if c.get("_class_name") not in SCHEDULERS:
        raise InteropError(f"{where}: _class_name={c.get('_class_name')!r}: only {sorted(SCHEDULERS)} are "
                           "imported (a scheduler with other maths, or another process, has no undiffuse counterpart)")
    refuse = check_settings(c, where, FIXED, IGNORED, "scheduler")
    if c.get("variance_type", "fixed_small") not in ("fixed_small", "fixed_large"):
        raise refuse("variance_type", "a learned variance is not imported")
    prediction = {v: k for k, v in PREDICTIONS.items()}.get(c.get("prediction_type", "epsilon"))
    if prediction is None:
        raise refuse("prediction_type", f"expected one of {sorted(PREDICTIONS.values())}")
    n = c.get("num_train_timesteps", 1000)
    if not isinstance(n, int) or n < 1:
        raise refuse("num_train_timesteps", "expected an integer >= 1")
    process = {"type": "ddpm", "num_steps": n, "schedule": _schedule(c, n, refuse)}
    clip = float(c.get("clip_sample_range", 1.0)) if c.get("clip_sample", True) else None
    return process, {"prediction": prediction, "sigma_data": 0.5, "learn_variance": False, "clip_x0": clip}


def _schedule(c: dict, n: int, refuse) -> str:
    """Our schedule name for the scheduler's betas."""
    if c.get("trained_betas") is not None:
        betas = torch.tensor(c["trained_betas"], dtype=torch.float64)
        for name in ("sigmoid", "linear", "cosine"):
            ours = discrete_betas(name, n)
            if betas.shape == ours.shape and float((betas - ours).abs().max()) <= BETA_ATOL:
                return name
        raise refuse("trained_betas", "matches none of undiffuse's DDPM schedules (linear, cosine, sigmoid)")
    schedule = c.get("beta_schedule", "linear")
    if schedule == "squaredcos_cap_v2":
        return "cosine"
    if schedule != "linear":
        raise refuse("beta_schedule", "undiffuse's DDPM has 'linear', 'squaredcos_cap_v2' (cosine) and explicit "
                                      "trained_betas (its sigmoid); diffusers' 'scaled_linear' and 'sigmoid' are "
                                      "other curves")
    for key, ours in (("beta_start", 1e-4 * 1000 / n), ("beta_end", 0.02 * 1000 / n)):
        if abs(float(c.get(key, 1e-4 if key == "beta_start" else 0.02)) - ours) > 1e-12:
            raise refuse(key, f"undiffuse's linear schedule over {n} steps has {key}={ours:g} (Ho et al.'s "
                              "1e-4..0.02 scaled by 1000 / N)")
    return "linear"
