"""The objective of Cold Diffusion runs (Bansal et al. 2022) in the shared Trainer: the restorer,
its loss, its prior, its grids.

``undiffuse train --process blur`` (or mask, pixelate, desaturate, snow, fade, gaussian, with
settings as in "blur:T=20:sigma=7") trains a restoration network ``R(x_t, t) -> x0`` through the
same ``Trainer`` as Gaussian runs: run directory, checkpoints, EMA, resume and DDP are shared, and
``Trainer.train_step`` draws, for the whole global batch and in this order, the label dropout, then
(``ColdObjective.draw``) ``t = degradation.sample_t(b, gen)`` and ``state =
degradation.sample_state((b, C, H, W), gen)``, and keeps its share (see ``undiffuse.trainer``). The
loss is ``cold.restorer.cold_loss`` (L1 by default).

What this module adds:

* ``ColdObjective``, and ``build_restorer``: the network sized to the data, wrapped in ``ColdRestorer`` (saved config
  ``{"prediction": "x0", "residual": ..., "standardize_input": ...}``);
* the generation prior (``prior.py``): at the start of training rank 0 fits a ``prior_components``-Gaussian
  ``GaussianMixturePrior`` to ``degradation.summarize(D(x0, T))`` of the training images (at most
  ``MAX_PRIOR_IMAGES`` of them) and writes it atomically to ``RUN/cold_prior.json``, unless the
  degradation knows its own end state (gaussian, fade). A mixture with full covariances over more
  than ``MAX_PRIOR_FEATURES`` features (every pixel of a 32 x 32 colour image, say) would take
  hundreds of megabytes of JSON, so then no prior is written (with a warning): such a run restores
  but does not generate;
* ``write_cold_samples``: the grids. ``samples/TAG.png`` holds generated images (prior start plus
  ``cfg.sampler``, Algorithm 2 by default) and ``samples/TAG-restore.png`` a restoration strip
  (clean images, ``D(x0, T)``, then Algorithms 1 and 2 and the direct restoration); without a prior
  ``samples/TAG.png`` is the strip.

Randomness: the prior fit and the grids use private generators seeded with ``cfg.seed``, never
``Trainer.gen`` nor torch's global RNG, so a run resumed on CPU stays bitwise equal to one that never
stopped.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data import TensorData
from ..nets import build_net
from ..objectives import Draws, Objective
from ..pictures import save_restoration_strip
from .degradations import make_degradation
from .prior import prepare_prior
from .restorer import ColdRestorer, cold_loss


def build_restorer(cfg, data: TensorData) -> ColdRestorer:
    """The configured network sized to the images (``checks.check_data_fits`` has refused points),
    as the restoration operator of ``cfg.process``."""
    num_classes = data.num_classes if (cfg.class_conditional and data.labels is not None) else None
    c, size = data.x.shape[1], data.x.shape[-1]
    # A standardized input carries mu and log s beside (x - mu) / s: three planes per channel.
    in_channels = 3 * c if cfg.standardize_input else c
    net = build_net(cfg.net, in_channels=in_channels, out_channels=c, image_size=size, num_classes=num_classes)
    return ColdRestorer(net, make_degradation(cfg.process), residual=cfg.residual,
                        standardize=cfg.standardize_input)


def restorer_config(restorer: ColdRestorer) -> dict:
    """The run's "denoiser" entry for a cold run: what the network predicts."""
    return {"prediction": "x0", "residual": bool(restorer.residual),
            "standardize_input": bool(restorer.standardize)}


def strip_images(data: TensorData, k: int = 8, seed: int = 0) -> torch.Tensor:
    """``k`` training images, the same at every grid (a seeded choice)."""
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:k]
    return data.x[idx]


class ColdObjective(Objective):
    """Cold Diffusion training (see the module docstring): the restorer ``R(D(x0, t), t) ~ x0`` under
    ``cold_loss`` (L1 by default), the severities t and the degradation's state drawn per batch."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.prior = None  # fitted by ``prepare`` (rank 0); else the pipeline reads RUN/cold_prior.json

    def build(self, data: TensorData, context_dim: int | None = None) -> ColdRestorer:
        return build_restorer(self.cfg, data)

    def model_config(self, model: ColdRestorer) -> dict:
        return restorer_config(model)

    def process(self, model: ColdRestorer):
        return model.degradation

    def prepare(self, run_dir: Path, data: TensorData, model: ColdRestorer) -> None:
        """The start of generation: a mixture over fully degraded training images (``prior.py``)."""
        self.prior = prepare_prior(run_dir, model.degradation, data.x, self.cfg.seed, self.cfg.prior_components)

    def draw(self, model, b, shape, gen, dtype) -> Draws:
        deg = model.degradation
        t = deg.sample_t(b, gen, weighting=self.cfg.severity_weighting)
        return {"t": t, "state": deg.sample_state(shape, gen, dtype=dtype)}  # None for deterministic ones

    def loss(self, forward, model, x0, cond, draws):
        def restore(x, t, cond=None):  # autocast around the network only: D runs in float32
            with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
                return forward(x, t, cond)

        return cold_loss(restore, model.degradation, x0, t=draws["t"], state=draws["state"], cond=cond,
                         loss=self.cfg.loss)

    def pipeline(self, model, shape, num_classes, class_names, run_dir, text=None, encoder=None):
        from .pipeline import ColdPipeline

        return ColdPipeline(model, shape, num_classes, class_names, run_dir, prior=self.prior)

    def write_samples(self, trainer, tag: str) -> Path:
        return write_cold_samples(trainer, tag)


def write_cold_samples(trainer, tag: str) -> Path:
    """The grids of a cold run (see the module docstring); returns the main picture."""
    from ..viz import save_grid

    cfg, pipe = trainer.cfg, trainer.pipeline()
    folder = trainer.run_dir / "samples"
    images = strip_images(trainer.data, seed=cfg.seed)
    if not pipe.can_generate:
        return save_restoration_strip(pipe, images, folder / f"{tag}.png", seed=cfg.seed)
    save_restoration_strip(pipe, images, folder / f"{tag}-restore.png", seed=cfg.seed)
    n, k = cfg.num_samples, trainer.num_classes
    labels = None if k is None else torch.arange(n) % k
    x = pipe.sample(n, sampler=cfg.sampler, num_inference_steps=cfg.sample_steps, seed=cfg.seed, class_labels=labels,
                    guidance=cfg.guidance if labels is not None else 1.0)
    return save_grid(x, folder / f"{tag}.png", nrow=k or None)
