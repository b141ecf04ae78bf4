"""The notebook-facing API: ``undiffuse.train(config)`` and ``undiffuse.load(run_dir).sample(...)``.

A run whose process is a cold degradation (``--process blur``, ...) loads as a ``ColdPipeline``
(``undiffuse.cold_pipeline``): the same ``sample`` with the cold samplers, plus ``restore``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import latest_checkpoint, load_weights, read_json
from .config import TrainConfig
from .denoiser import Denoiser
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .nets import build_net
from .processes import from_config, is_cold
from .samplers import get_sampler, timesteps
from .samplers.cold import COLD_SAMPLERS
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
        self._classifier = None  # RUN/classifier, loaded on first use by classifier guidance

    @property
    def process(self):
        return self.denoiser.process

    @torch.no_grad()  # not inference_mode: classifier guidance differentiates the classifier
    def sample(self, n: int = 16, *, sampler: str = "ddim", steps: int = 50,
               spacing: str | None = None, seed: int = 0,
               class_labels: Tensor | list[int] | int | None = None, guidance: float = 1.0,
               classifier_scale: float = 0.0, bf16: bool = False, trajectory: bool = False,
               **options) -> Tensor | SampleResult:
        """Draw ``n`` samples with ``sampler`` (``undiffuse.samplers.SAMPLERS``) in ``steps`` steps
        on the ``spacing`` schedule (default: the sampler's own, see ``SamplerInfo.spacing``).

        ``class_labels``: one label for all, a list, or None (the null class for conditional
        models). ``guidance``: classifier-free guidance scale w (1 = plain conditional, 0 =
        unconditional). ``classifier_scale``: classifier guidance with the run's noisy classifier
        (``undiffuse train-classifier``) on top. ``options`` go to the sampler (e.g. ``eta``).
        Returns a tensor in the data range, or a SampleResult with the intermediate x_t and
        predicted x0 when ``trajectory=True``.
        """
        if sampler in COLD_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is a cold-diffusion sampler, but this run's process is "
                             f"Gaussian ({self.process.config()['type']}); choose ddim, ddpm, ... "
                             "(`undiffuse samplers` lists them)")
        info = get_sampler(sampler)
        gen = torch.Generator().manual_seed(seed)
        ts = timesteps(self.process, steps, spacing or info.spacing)
        x = self.process.prior((n, *self.shape), gen, t=ts[0])
        cond = self.labels_for(class_labels, n)
        denoiser = self.guided(cond, guidance, classifier_scale)
        xs, x0s = [], []
        callback = (lambda d: (xs.append(d["x"].float()), x0s.append(d["x0_hat"].float()))) \
            if trajectory else None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = info(denoiser, x, ts, cond=cond, generator=gen, callback=callback, **options)
        out = out.float()
        if not trajectory:
            return out
        return SampleResult(out, xs, x0s, ts[:len(xs)].tolist())

    def guided(self, cond: Tensor | None, guidance: float = 1.0, classifier_scale: float = 0.0):
        """The denoiser with classifier-free guidance w and classifier guidance s applied."""
        denoiser = self.denoiser
        if guidance != 1.0 or classifier_scale:
            if cond is None or self.num_classes is None:
                raise ValueError("guidance needs a class-conditional model and class labels")
        if guidance == 0.0:
            denoiser = _NullClass(denoiser, self.num_classes)
        elif guidance != 1.0:
            denoiser = ClassifierFreeGuidance(denoiser, guidance, null_cond=self.num_classes)
        if classifier_scale:
            denoiser = ClassifierGuidance(denoiser, self.classifier(), classifier_scale, pass_cond=True)
        return denoiser

    def classifier(self):
        """The run's noise-conditional classifier (``RUN/classifier``), loaded once."""
        if self._classifier is None:
            from .classifier import load_classifier

            path = None if self.run_dir is None else Path(self.run_dir) / "classifier"
            if path is None or not path.is_dir():
                raise FileNotFoundError(f"classifier guidance needs a classifier in {path}; train one "
                                        "with `undiffuse train-classifier --run RUN`")
            self._classifier = load_classifier(path, self.process)
        return self._classifier

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


class _NullClass:
    """A conditional denoiser asked for its null class whatever the labels (guidance w = 0)."""

    def __init__(self, denoiser, null: int):
        self.denoiser, self.null, self.process = denoiser, null, denoiser.process
        self.clip_x0 = getattr(denoiser, "clip_x0", None)

    def __call__(self, xt: Tensor, t: Tensor, cond: Tensor | None = None):
        return self.denoiser(xt, t, torch.full((xt.shape[0],), self.null, dtype=torch.long))


def load(run_dir: str | Path, weights: str = "ema") -> Pipeline:
    """Load a run directory written by ``undiffuse train`` (EMA weights by default): a Pipeline,
    or a ColdPipeline for a cold run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; train one with "
                                "`undiffuse train --out DIR`")
    cfg = read_json(run_dir / "config.json")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (checkpoints/latest is missing)")
    if weights not in ("ema", "model"):
        raise ValueError("weights must be 'ema' or 'model'")
    if is_cold(cfg["process"]):
        from .cold_pipeline import load_cold

        return load_cold(run_dir, cfg, ckpt, weights)
    net = build_net(cfg["net"])
    den = cfg["denoiser"]
    denoiser = Denoiser(net, from_config(cfg["process"]), den["prediction"],
                        sigma_data=den["sigma_data"], learn_variance=den["learn_variance"],
                        clip_x0=den["clip_x0"])
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
