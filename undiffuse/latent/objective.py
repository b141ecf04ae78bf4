"""Training the KL autoencoder in the shared Trainer: `undiffuse train-autoencoder`.

The run directory, checkpoints (the autoencoder's weights under diffusers' names), EMA, bitwise
resume, DDP and progress bars are the Trainer's; this objective says what differs:

* data: a seeded held-out set (``HELDOUT`` images at most, a tenth of small sets) is kept out of
  training, to measure reconstruction on images the autoencoder never saw;
* the random numbers of a batch: the noise of the posterior sample z = mean + std * eps, drawn from
  the Trainer's generator (so a resumed run draws the same);
* the loss per image: the mean per-pixel L1 (or L2, ``--loss``) error of decode(z) plus
  ``kl_weight`` * KL(q(z | x) || N(0, I)) / (pixels per image). Latent diffusion sums both terms over
  pixels with weight 1e-6 on the KL; dividing both by the pixel count keeps that balance with a
  per-pixel error, and Adam does not see the constant factor. No perceptual (LPIPS) or adversarial
  term: LPIPS needs a pretrained net we cannot download, and a patch GAN is left for later;
* the grids: held-out originals above their reconstructions, ``samples/TAG.png``. At the end
  ("final") the EMA autoencoder is measured and config.json gains an "autoencoder" entry: the latent
  scale (1 / std of the latents over training images, ``measure.latent_scale``) and PSNR / SSIM
  (and FID-style on mnist and digits) of held-out reconstructions.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import read_json, write_json
from ..data import TensorData
from ..nets import build_net
from ..objectives import Draws, Objective
from .autoencoder import AutoencoderKL
from .measure import latent_scale, reconstruction_metrics, save_reconstructions

HELDOUT = 256  # held-out images at most
GRID_IMAGES = 8


class ReconstructionLoss:
    """The run's "process" entry: what the autoencoder is trained to do."""

    def __init__(self, loss: str, kl_weight: float):
        self.loss, self.kl_weight = loss, kl_weight

    def config(self) -> dict:
        return {"type": "autoencoder", "loss": self.loss, "kl_weight": self.kl_weight}


class AutoencoderObjective(Objective):
    """See the module docstring."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.heldout: TensorData | None = None

    def training_data(self, data: TensorData) -> TensorData:
        k = min(HELDOUT, len(data) // 10)
        if k < 1:
            raise ValueError(f"{data.name} has {len(data)} images; the autoencoder keeps a tenth out to measure "
                             "reconstruction, so it needs at least 10")
        rest, self.heldout = data.split(k / len(data), seed=self.cfg.seed)
        return rest

    def build(self, data: TensorData, context_dim: int | None = None) -> AutoencoderKL:
        c, h = data.x.shape[1], data.x.shape[-1]
        ae = build_net(self.cfg.net, in_channels=c, out_channels=c, sample_size=h)
        ae.latent_shape(tuple(data.x.shape[1:]))  # refuses images the downsampling does not divide
        return ae

    def model_config(self, model: AutoencoderKL) -> dict:
        return {"type": "autoencoder_kl", "factor": model.factor}

    def process(self, model: AutoencoderKL) -> ReconstructionLoss:
        return ReconstructionLoss(self.cfg.loss, self.cfg.kl_weight)

    def draw(self, model: AutoencoderKL, b, shape, gen, dtype) -> Draws:
        return {"noise": torch.randn((b, *model.latent_shape(tuple(shape[1:]))), generator=gen, dtype=dtype)}

    def loss(self, forward, model, x0, cond, draws):
        with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            rec, mean, logvar = forward(x0, draws["noise"])
        err = (rec.float() - x0).flatten(1)
        err = err.abs() if self.cfg.loss == "l1" else err.pow(2)
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).flatten(1).sum(1)
        return err.mean(1) + self.cfg.kl_weight * kl / err.shape[1]

    def pipeline(self, model, shape, num_classes, class_names, run_dir, text=None, encoder=None) -> AutoencoderKL:
        """An autoencoder run has no sampling pipeline: its "pipeline" is the (EMA) autoencoder."""
        return model.eval()

    def write_samples(self, trainer, tag: str) -> Path:
        ae, folder = trainer.pipeline(), trainer.run_dir / "samples"
        path = save_reconstructions(ae, self.heldout.x[:GRID_IMAGES], folder / f"{tag}.png")
        if tag == "final":
            record_measurements(trainer.run_dir, ae, trainer.data, self.heldout, trainer.step, self.cfg.seed)
        return path


def record_measurements(run_dir: Path, ae: AutoencoderKL, train: TensorData, heldout: TensorData, step: int,
                        seed: int) -> dict:
    """Measure the autoencoder (scale on training images, reconstruction on held-out ones) and add the
    result to config.json as its "autoencoder" entry; returns it."""
    entry = {"scaling_factor": latent_scale(ae, train.x, seed), "step": step,
             "reconstruction_heldout": reconstruction_metrics(ae, heldout.x, _feature_net(train))}
    config = read_json(run_dir / "config.json")
    config["autoencoder"] = entry
    write_json(run_dir / "config.json", config)
    return entry


def _feature_net(data: TensorData):
    """The FID-style feature net of a built-in dataset that has one (mnist, digits) at this image size."""
    from ..evaluate import FEATURE_DATASETS
    from ..metrics import get_feature_net

    if data.name not in FEATURE_DATASETS:
        return None
    net, _ = get_feature_net(data.name)
    return net if list(data.x.shape[1:]) == [net.config["in_channels"], net.config["image_size"],
                                             net.config["image_size"]] else None
