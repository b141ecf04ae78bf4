"""Latent diffusion (Rombach et al. 2022): `undiffuse train --autoencoder RUN`.

Gaussian diffusion, unchanged, on the autoencoder's scaled latents instead of pixels: the objective is
``GaussianObjective`` with one step in front (``training_data``): the training images are encoded once,
up front, to their posterior means times the measured latent scale, and the Trainer then trains on
those latents exactly as on images. So every process, prediction type, weighting, sampler, guidance
mode and condition (class labels, captions: they travel with the latents) of pixel diffusion works,
through the same code.

Encoding once with the means (rather than a fresh posterior sample per step, as latent diffusion's
code does) makes a step as cheap as the U-Net alone; with the small KL weight the posterior std is
small next to the latents' spread (``docs/latent.md`` gives the measured ratio).

Bad input is refused before anything is written: an autoencoder run of another channel count than
the data, images its downsampling does not divide, and latents the U-Net cannot take (a side not
divisible by 2 ** (levels - 1)).
"""
from __future__ import annotations

from ..data import TensorData
from ..distributed import resolve_device
from ..objectives import GaussianObjective
from .measure import encode_means
from .runs import load_autoencoder


class LatentObjective(GaussianObjective):
    """See the module docstring."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.autoencoder, self.record, self.image_shape = None, None, None

    def training_data(self, data: TensorData) -> TensorData:
        if data.x.ndim != 4:
            raise ValueError(f"latent diffusion encodes images, but {data.name} holds {data.x.shape[1]}-D points; "
                             "drop --autoencoder")
        ae, record = load_autoencoder(self.cfg.autoencoder)
        shape, c = tuple(data.x.shape[1:]), ae.config["in_channels"]
        if shape[0] != c:
            raise ValueError(f"the autoencoder run {self.cfg.autoencoder} encodes {c}-channel images, but {data.name} "
                             f"has {shape[0]}-channel images {shape}; use --channels {c}, or train an autoencoder on "
                             "this data (`undiffuse train-autoencoder --data ...`)")
        latent_shape = ae.latent_shape(shape)  # refuses a size its downsampling does not divide
        ae.to(resolve_device(self.cfg.device))
        z = encode_means(ae, data.x) * record["scaling_factor"]
        self.autoencoder, self.image_shape = ae.cpu(), shape
        self.record = {**record, "image_shape": list(shape), "latent_shape": list(latent_shape),
                       "latent_std": float(z.std()), "encoded": "posterior mean"}
        return TensorData(z, data.labels, data.num_classes, data.name, data.class_names, data.captions,
                          data.attributes)

    def build(self, data: TensorData, context_dim: int | None = None):
        denoiser = super().build(data, context_dim)
        side, levels = data.x.shape[-1], getattr(denoiser.net, "num_levels", 1)
        need = 2 ** (levels - 1)
        if side % need:
            f = self.autoencoder.factor
            raise ValueError(f"the latents are {side}x{side} ({self.image_shape[-1]}-pixel images / autoencoder "
                             f"factor {f}), but the U-Net --net {self.cfg.net} halves its input {levels - 1} times "
                             f"and needs a multiple of {need}; use a U-Net with fewer levels (channel_mult), an "
                             f"autoencoder with a smaller factor, or larger images (--image-size {need * f * (side // need + 1)})")
        return denoiser

    def extra_config(self) -> dict:
        return {"latent": self.record}

    def pipeline(self, model, shape, num_classes, class_names, run_dir, text=None, encoder=None):
        from .pipeline import LatentPipeline

        return LatentPipeline(model, shape, num_classes, class_names, run_dir, text=text, encoder=encoder,
                              autoencoder=self.autoencoder, image_shape=self.image_shape)
