"""``LatentPipeline``: a Gaussian pipeline whose model denoises latents, decoded to images.

Sampling is ``Pipeline``'s (every sampler, guidance mode and condition): it starts from the prior
in the latent shape, and the result ``z`` is decoded as ``decoder(z / scaling_factor)``, clamped to
the data range. With ``trajectory=True`` the recorded x_t and predicted x0 of every step are decoded
too, so the pictures show images (the decoded x_t of early steps is the decoder's view of noise).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from ..denoiser import Denoiser
from ..pipeline import Pipeline
from ..sampling import SampleSpec
from .autoencoder import AutoencoderKL
from .runs import load_recorded_autoencoder


class LatentPipeline(Pipeline):
    """``shape`` is the images' (what ``sample`` returns); ``denoised_shape`` the latents'."""

    def __init__(self, denoiser: Denoiser, latent_shape: tuple[int, ...], num_classes: int | None = None,
                 class_names: list[str] | None = None, run_dir: Path | None = None, *, text: dict | None = None,
                 encoder=None, autoencoder: AutoencoderKL, image_shape: tuple[int, ...]):
        super().__init__(denoiser, latent_shape, num_classes, class_names, run_dir, text=text, encoder=encoder)
        self.latent_shape, self.shape = tuple(latent_shape), tuple(image_shape)
        self.autoencoder = autoencoder.eval()

    @property
    def denoised_shape(self) -> tuple[int, ...]:
        return self.latent_shape

    def decode(self, z: Tensor) -> Tensor:
        """Images in [-1, 1] of scaled latents ``z`` (on ``z``'s device)."""
        ae = self.autoencoder
        device = next(ae.parameters()).device
        return ae.decode(z.float().to(device) / ae.scaling_factor).clamp(-1, 1).to(z.device)

    def _sample(self, n: int, spec: SampleSpec, callback: Callable[[dict], None] | None) -> Tensor:
        decoded = None if callback is None else (
            lambda d: callback({**d, "x": self.decode(d["x"]), "x0_hat": self.decode(d["x0_hat"])}))
        return self.decode(super()._sample(n, spec, decoded))


def load_latent_pipeline(denoiser: Denoiser, cfg: dict, run_dir: Path, encoder=None) -> LatentPipeline:
    """The pipeline of a latent run's checked config.json, with its recorded autoencoder."""
    latent, data = cfg["latent"], cfg["data"]
    ae = load_recorded_autoencoder(latent, run_dir)
    image_shape = tuple(latent.get("image_shape") or ())
    if len(image_shape) != 3 or ae.latent_shape(image_shape) != tuple(data["shape"]):
        raise ValueError(f"{run_dir / 'config.json'}: 'latent.image_shape' {list(image_shape)} does not encode to "
                         f"'data.shape' {data['shape']} with its autoencoder; restore the file from the run")
    return LatentPipeline(denoiser, data["shape"], data["num_classes"], data.get("class_names"), run_dir,
                          text=cfg.get("text"), encoder=encoder, autoencoder=ae, image_shape=image_shape)
