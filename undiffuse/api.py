"""The notebook API: ``undiffuse.train(config)`` and ``undiffuse.load(run_dir)``.

    import undiffuse
    pipe = undiffuse.train(undiffuse.preset("mnist"))   # or undiffuse.load("runs/mnist")
    images = pipe.sample(16, sampler="ddim", num_inference_steps=50, class_labels=7)

``load`` gives the pipeline of the run's kind: ``Pipeline`` for Gaussian (and text) runs,
``ColdPipeline`` for cold ones; both answer ``pipe.can_generate`` / ``can_restore`` / ``takes_prompts``.
"""
from __future__ import annotations

from pathlib import Path

from .checkpoint import latest_checkpoint
from .cold import is_cold
from .cold.pipeline import load_cold
from .config import TrainConfig
from .denoiser import Denoiser
from .pipeline import Pipeline
from .processes import from_config
from .rundir import check_run_dir
from .run_files import build_run_net, config_errors, is_autoencoder_run, load_checked, read_run_config
from .trainer import Trainer


def load(run_dir: str | Path, weights: str = "ema", encoder=None) -> Pipeline:
    """Load a run directory written by ``undiffuse train`` (EMA weights by default): a Pipeline,
    or a ColdPipeline for a cold run. A text run's encoder is rebuilt by name on first use, unless
    ``encoder`` gives it."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)  # checked: a bad entry is an error naming it, not a KeyError
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/latest is missing)")
    if weights not in ("ema", "model"):
        raise ValueError("weights must be 'ema' or 'model'")
    if is_cold(cfg["process"]):
        return load_cold(run_dir, cfg, ckpt, weights)
    if is_autoencoder_run(cfg):
        raise ValueError(f"{run_dir} is an autoencoder run (train-autoencoder): it encodes and decodes but does not "
                         "sample; load it with undiffuse.latent.runs.load_autoencoder, or train diffusion on its "
                         f"latents with `undiffuse train --autoencoder {run_dir}`")
    net = build_run_net(cfg, run_dir / "config.json")
    den = cfg["denoiser"]
    with config_errors(run_dir / "config.json", "'process' or 'denoiser'"):
        denoiser = Denoiser(net, from_config(cfg["process"]), den["prediction"],
                            sigma_data=den["sigma_data"], learn_variance=den["learn_variance"],
                            clip_x0=den["clip_x0"])
    load_checked(denoiser, ckpt / f"{weights}.safetensors")
    if cfg.get("latent") is not None:  # a latent run: samples decoded by its autoencoder
        from .latent.pipeline import load_latent_pipeline

        return load_latent_pipeline(denoiser, cfg, run_dir, encoder)
    data = cfg["data"]
    return Pipeline(denoiser, data["shape"], data["num_classes"], data.get("class_names"), run_dir,
                    text=cfg.get("text"), encoder=encoder)


def train(config: TrainConfig | None = None, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True, **overrides) -> Pipeline:
    """Train a model (the MNIST demo preset by default) and return its Pipeline. As with `undiffuse
    train`, an ``out`` that already holds a run is refused unless ``resume`` (continue it) or
    ``overwrite`` (delete it and start over) says what to do with it."""
    cfg = (config or TrainConfig()).updated(**overrides) if overrides else (config or TrainConfig())
    check_run_dir(cfg.out, resume=resume, overwrite=overwrite)  # before the data loads
    trainer = Trainer(cfg, overwrite=overwrite)
    if resume:
        trainer.resume()
    trainer.fit(progress=progress)
    return load(cfg.out)
