"""undiffuse: a lab for diffusion models.

    import undiffuse
    pipe = undiffuse.train(undiffuse.preset("mnist"))        # or undiffuse.load("runs/mnist")
    images = pipe.sample(16, sampler="ddim", num_inference_steps=50, class_labels=7)
"""
from .config import PRESETS, TrainConfig, preset
from .denoiser import Denoiser, Prediction
from .api import load, train
from .pipeline import Pipeline

__version__ = "0.1.0"
__all__ = ["TrainConfig", "PRESETS", "preset", "train", "load", "Pipeline", "Denoiser", "Prediction"]
