"""undiffuse: a lab for diffusion models.

    import undiffuse
    pipe = undiffuse.train(undiffuse.preset("mnist"))        # or undiffuse.load("runs/mnist")
    images = pipe.sample(16, sampler="ddim", num_inference_steps=50, class_labels=7)

How the package is put together: docs/architecture.md.
"""
from .api import load, train
from .config import PRESETS, TrainConfig, preset
from .denoiser import Denoiser, Prediction
from .pipeline import BasePipeline, Pipeline, SampleResult
from .sampling import SampleSpec

__version__ = "0.1.0"
__all__ = ["TrainConfig", "PRESETS", "preset", "train", "load", "Pipeline", "BasePipeline", "SampleResult",
           "SampleSpec", "Denoiser", "Prediction"]
