"""What a run trains. The ``Trainer`` (loop, AdamW, EMA, checkpoints, resume, DDP) is the same for
every kind of run; an objective says what differs:

| objective                          | model          | random numbers of a batch | loss            |
|------------------------------------|----------------|---------------------------|-----------------|
| ``GaussianObjective``              | ``Denoiser``   | levels t, noise eps       | ``diffusion_loss`` (Ho et al. 2020, eq. 14; x0 / v / EDM targets) |
| ``cold.objective.ColdObjective``   | ``ColdRestorer`` | severities t, the degradation's state | ``cold_loss`` (Bansal et al. 2022, sec. 3) |

An objective builds the model, draws the random numbers of the whole global batch (after the
condition's dropout, so that the generator's state does not depend on the number of processes),
computes the per-sample loss of this process's share, and draws the preview grids. A new kind of
run (as latent diffusion, ``undiffuse.latent``) is one new objective: ``objective_for`` picks it from the config.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .config import TrainConfig
from .data import TensorData
from .losses import diffusion_loss
from .train_parts import build_denoiser

Draws = dict[str, Tensor | dict | None]


class Objective:
    """The interface (see the module docstring); ``GaussianObjective`` is the reference one."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def training_data(self, data: TensorData) -> TensorData:
        """What the model trains on: the data itself, or (latent runs) its latents."""
        return data

    def build(self, data: TensorData, context_dim: int | None = None) -> torch.nn.Module:
        raise NotImplementedError

    def extra_config(self) -> dict:
        """Entries of config.json beside the shared ones (a latent run: its autoencoder)."""
        return {}

    def model_config(self, model) -> dict:
        """The run's "denoiser" entry of config.json: how to rebuild the model around its net."""
        return model.config()

    def process(self, model):
        """The forward process (or degradation) of ``model``."""
        return model.process

    def prepare(self, run_dir: Path, data: TensorData, model) -> None:
        """Rank 0, once a run directory is claimed: write what sampling needs beside the weights."""

    def draw(self, model, b: int, shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> Draws:
        raise NotImplementedError

    def loss(self, forward, model, x0: Tensor, cond, draws: Draws) -> Tensor:
        """Per-sample loss (B,) of this process's share; ``forward`` runs the model (DDP-wrapped)."""
        raise NotImplementedError

    def pipeline(self, model, shape: tuple[int, ...], num_classes: int | None, class_names, run_dir: Path,
                 text: dict | None = None, encoder=None):
        raise NotImplementedError

    def write_samples(self, trainer, tag: str) -> Path:
        raise NotImplementedError


class GaussianObjective(Objective):
    """Denoising score matching on a Gaussian process (``cfg.process``): x_t = alpha x0 + sigma eps,
    the net predicts eps, x0, v or the EDM-preconditioned x0 (``cfg.prediction``), L2 or L1, uniform
    or min-SNR weighted (``cfg.weighting``); text runs are Gaussian runs conditioned on captions."""

    def build(self, data: TensorData, context_dim: int | None = None):
        return build_denoiser(self.cfg, data, context_dim)

    def draw(self, model, b, shape, gen, dtype) -> Draws:
        t = model.process.sample_t(b, gen)
        return {"t": t, "noise": torch.randn(shape, generator=gen, dtype=dtype)}

    def loss(self, forward, model, x0, cond, draws):
        cfg = self.cfg
        with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            return diffusion_loss(model, x0, cond, loss=cfg.loss, weighting=cfg.weighting, snr_gamma=cfg.snr_gamma,
                                  t=draws["t"], noise=draws["noise"], forward=forward)

    def pipeline(self, model, shape, num_classes, class_names, run_dir, text=None, encoder=None):
        from .pipeline import Pipeline

        return Pipeline(model, shape, num_classes, class_names, run_dir, text=text, encoder=encoder)

    def write_samples(self, trainer, tag: str) -> Path:
        """A grid of EMA samples (one column per class for conditional models; text runs: preview
        prompts x seeds) under samples/."""
        from .viz import plot_points, save_grid

        cfg, pipe = self.cfg, trainer.pipeline()
        path = trainer.run_dir / "samples" / f"{tag}.png"
        if pipe.takes_prompts:
            from .text.objective import write_text_samples

            return write_text_samples(trainer, pipe, tag)
        n, k = cfg.num_samples, pipe.num_classes
        labels = None if k is None else torch.arange(n) % k
        x = pipe.sample(n, sampler=cfg.sampler, num_inference_steps=cfg.sample_steps, seed=cfg.seed,
                        class_labels=labels, guidance=cfg.guidance if labels is not None else 1.0,
                        bf16=picture_bf16(trainer))
        if x.ndim == 4:
            return save_grid(x, path, nrow=k or None)
        return plot_points(x, path, reference=trainer.data.x[:n])


def picture_bf16(trainer) -> bool:
    """The training pictures' precision: the CLI's sampling default for the run (``bf16_by_default``:
    bf16 on Gaussian pixel runs where the CPU computes it natively; half the picture time there),
    unless the run trains in float32 (``--no-bf16``)."""
    from .compiling import bf16_by_default

    return trainer.cfg.bf16 and bf16_by_default(trainer.run_config(), torch.device("cpu"))


def objective_for(cfg: TrainConfig) -> Objective:
    """The objective of a (resolved) config: the autoencoder's (train-autoencoder), latent diffusion
    (--autoencoder), cold for a cold degradation, Gaussian otherwise."""
    if cfg.autoencoder_training:
        from .latent.objective import AutoencoderObjective

        return AutoencoderObjective(cfg)
    if cfg.autoencoder is not None:
        from .latent.diffusion import LatentObjective

        return LatentObjective(cfg)
    if cfg.cold:
        from .cold.objective import ColdObjective

        return ColdObjective(cfg)
    return GaussianObjective(cfg)
