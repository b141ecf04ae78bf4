"""The notebook-facing API: ``undiffuse.train(config)`` and ``undiffuse.load(run_dir).sample(...)``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import latest_checkpoint, load_weights, read_json
from .config import TrainConfig
from .denoiser import Denoiser
from .guidance import ClassifierFreeGuidance
from .nets import build_net
from .processes import from_config
from .samplers import SAMPLERS, timesteps
# Imported here, not lazily in train(): the first import of the submodule undiffuse.train sets the
# package attribute `undiffuse.train` to that module, which must happen before undiffuse/__init__
# binds the name to the train() function below, or `undiffuse.train(...)` stops being callable.
from .train import Trainer


@dataclass
class SampleResult:
    x0: Tensor                      # final samples
    xs: list[Tensor] | None = None  # x_t at each step (with trajectory=True)
    x0_hats: list[Tensor] | None = None
    ts: list[float] | None = None


class Pipeline:
    """A trained denoiser (EMA weights) plus what is needed to sample from it."""

    def __init__(self, denoiser: Denoiser, shape: tuple[int, ...], num_classes: int | None = None,
                 class_names: list[str] | None = None, run_dir: Path | None = None):
        self.denoiser = denoiser.eval()
        self.shape, self.num_classes, self.class_names = tuple(shape), num_classes, class_names
        self.run_dir = run_dir

    @property
    def process(self):
        return self.denoiser.process

    @torch.inference_mode()
    def sample(self, n: int = 16, *, sampler: str = "ddim", steps: int = 50,
               spacing: str = "trailing", seed: int = 0, class_labels: Tensor | list[int] | int | None = None,
               guidance: float = 1.0, bf16: bool = False, trajectory: bool = False,
               **options) -> Tensor | SampleResult:
        """Draw ``n`` samples. ``class_labels``: one label for all, a list, or None (the null class
        for conditional models). ``guidance``: classifier-free guidance scale w (1 = plain
        conditional). Returns a tensor in the data range, or a SampleResult with the
        intermediate x_t and predicted x0 when ``trajectory=True``."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        gen = torch.Generator().manual_seed(seed)
        x = self.process.prior((n, *self.shape), gen)
        cond = self.labels_for(class_labels, n)
        ts = timesteps(self.process, steps, spacing)
        denoiser = self.denoiser
        if guidance != 1.0:
            if cond is None:
                raise ValueError("guidance needs a class-conditional model")
            denoiser = ClassifierFreeGuidance(denoiser, guidance, null_cond=self.num_classes)
        xs, x0s = [], []
        callback = (lambda d: (xs.append(d["x"].float()), x0s.append(d["x0_hat"].float()))) \
            if trajectory else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = SAMPLERS[sampler](denoiser, x, ts, cond=cond, generator=gen,
                                    callback=callback, **options)
        out = out.float()
        if not trajectory:
            return out
        return SampleResult(out, xs, x0s, ts[:len(xs)].tolist())

    def save_trajectory(self, path: str | Path, n: int = 10, *, columns: int = 10,
                        class_label: int | None = None, guidance: float = 1.0, **sample_options) -> Path:
        """The picture that explains diffusion: for n images, x_t and the predicted x0 at
        ``columns`` evenly spaced steps, ending with the sample (one digit per row for
        conditional models unless ``class_label`` fixes one)."""
        from .viz import save_trajectory

        if class_label is not None:
            labels = class_label
        else:
            labels = list(range(n)) if self.num_classes is not None and n <= self.num_classes else None
        res = self.sample(n, class_labels=labels, guidance=guidance if labels is not None else 1.0,
                          trajectory=True, **sample_options)
        keep = sorted({round(i * (len(res.xs) - 1) / (columns - 1)) for i in range(columns)})
        return save_trajectory([res.xs[i] for i in keep] + [res.x0],
                               [res.x0_hats[i] for i in keep] + [res.x0], path,
                               ts=[res.ts[i] for i in keep] + [0.0])

    def labels_for(self, labels, n: int) -> Tensor | None:
        """Validated (n,) labels; None means the null class for a conditional model."""
        if labels is None:
            return None if self.num_classes is None else torch.full((n,), self.num_classes)
        if self.num_classes is None:
            raise ValueError("this model is unconditional: it takes no class labels")
        labels = torch.as_tensor(labels, dtype=torch.long)
        labels = labels.expand(n) if labels.ndim == 0 else labels
        if len(labels) != n or bool((labels < 0).any()) or bool((labels > self.num_classes).any()):
            raise ValueError(f"class labels must be {n} values in 0..{self.num_classes - 1} "
                             f"(or {self.num_classes} for unconditional), got {labels.tolist()}")
        return labels


def load(run_dir: str | Path, weights: str = "ema") -> Pipeline:
    """Load a run directory written by ``undiffuse train`` (EMA weights by default)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; train one with "
                                "`undiffuse train --out DIR`")
    cfg = read_json(run_dir / "config.json")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/latest is missing)")
    net = build_net(cfg["net"])
    den = cfg["denoiser"]
    denoiser = Denoiser(net, from_config(cfg["process"]), den["prediction"],
                        sigma_data=den["sigma_data"], learn_variance=den["learn_variance"],
                        clip_x0=den["clip_x0"])
    if weights not in ("ema", "model"):
        raise ValueError("weights must be 'ema' or 'model'")
    denoiser.load_state_dict(load_weights(ckpt / f"{weights}.safetensors"))
    data = cfg["data"]
    return Pipeline(denoiser, data["shape"], data["num_classes"], data.get("class_names"), run_dir)


def train(config: TrainConfig | None = None, *, resume: bool = False, progress: bool = True,
          **overrides) -> Pipeline:
    """Train a model (the MNIST demo preset by default) and return its Pipeline."""
    cfg = (config or TrainConfig()).updated(**overrides) if overrides else (config or TrainConfig())
    trainer = Trainer(cfg)
    if resume:
        trainer.resume()
    trainer.fit(progress=progress)
    return load(cfg.out)
