"""Cold Diffusion (Bansal et al. 2022, "Cold Diffusion: Inverting Arbitrary Image Transforms Without
Noise"): generative models from any image degradation, in one package.

| module            | holds                                                                  |
|-------------------|------------------------------------------------------------------------|
| ``degradations/`` | ``D(x0, t)``: blur, mask, pixelate, desaturate, snow, fade, gaussian   |
| ``restorer.py``   | ``R(x_t, t) -> x0``: ``ColdRestorer`` around a net, ``cold_loss``        |
| ``samplers.py``   | Algorithm 1 (naive), Algorithm 2 (improved), direct; ``generate``      |
| ``prior.py``      | the Gaussian-mixture start of generation and its run file              |
| ``iterative.py``  | iterative denoising: denoise, re-degrade less, repeat                  |
| ``objective.py``  | training: the batch, the loss and the preview grids of a cold run      |
| ``pipeline.py``   | ``ColdPipeline``: what ``undiffuse.load`` returns for a cold run       |

This module re-exports the maths (the first five); the objective and the pipeline import the
training and sampling layers, so import them from their modules.
"""
from .degradations import DEGRADATIONS, Degradation, State, degradation_from_config, is_cold, make_degradation
from .iterative import iterative_denoise
from .prior import GaussianMixturePrior
from .restorer import ColdRestorer, cold_loss, standardized_input
from .samplers import COLD_SAMPLERS, GENERATION_NOISE, cold_sample, generate

__all__ = ["DEGRADATIONS", "Degradation", "State", "degradation_from_config", "is_cold", "make_degradation",
           "iterative_denoise", "GaussianMixturePrior", "ColdRestorer", "cold_loss", "standardized_input",
           "COLD_SAMPLERS", "GENERATION_NOISE", "cold_sample", "generate"]
