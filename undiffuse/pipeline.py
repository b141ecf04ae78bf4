"""What ``undiffuse.load(run_dir)`` returns: a trained model that samples from a ``SampleSpec``.

Every kind of run has one pipeline interface (``BasePipeline``):

    pipe.sample(n, spec)                   # or pipe.sample(n, sampler="ddim", guidance=3, ...)
    pipe.can_generate, pipe.can_restore    # what it can do
    pipe.takes_labels, pipe.takes_prompts  # what it is conditioned on (``pipe.conditioning``)

``Pipeline`` is the Gaussian one (DDPM / VP / VE / EDM, with class labels, text or nothing);
``undiffuse.cold.pipeline.ColdPipeline`` adds ``degrade`` and ``restore`` for cold runs. Guidance,
labels and prompts are ``undiffuse.conditioning``'s; bf16 and compiled copies ``compiling.FastCopies``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from .checks import check_count, check_finite_samples
from .compiling import FastCopies
from .conditioning import Conditioning, conditioning_for
from .denoiser import Denoiser
from .sampling import SampleSpec
from .samplers import get_sampler, timesteps

#: Gaussian sampling defaults (``SampleSpec`` fields left at None).
DEFAULT_SAMPLER, DEFAULT_STEPS = "ddim", 50


@dataclass
class SampleResult:
    x0: Tensor                      # final samples
    xs: list[Tensor] | None = None  # x_t at each step (with trajectory=True)
    x0_hats: list[Tensor] | None = None
    ts: list[float] | None = None

    @property
    def images(self) -> Tensor:
        """The final samples (diffusers' name for them)."""
        return self.x0


class Trajectory:
    """A sampler callback that keeps x_t, the predicted x0 and the level of every step."""

    def __init__(self):
        self.xs, self.x0_hats, self.ts = [], [], []

    def __call__(self, d: dict) -> None:
        self.xs.append(d["x"].float().clone())
        self.x0_hats.append(d["x0_hat"].float().clone())
        self.ts.append(float(d["t"]))

    def result(self, x0: Tensor) -> SampleResult:
        return SampleResult(x0, self.xs, self.x0_hats, self.ts)


def _both(first: Callable[[dict], None], second: Callable[[dict], None]) -> Callable[[dict], None]:
    def call(d: dict) -> None:
        first(d)
        second(d)
    return call


class BasePipeline:
    """What every pipeline shares: the model, the data shape, the conditioning, and ``sample``.

    Subclasses implement ``_sample(n, spec, callback) -> Tensor`` and say what they can do."""

    can_generate = True
    can_restore = False

    def __init__(self, model: torch.nn.Module, shape: tuple[int, ...], conditioning: Conditioning,
                 class_names: list[str] | None = None, run_dir: Path | None = None):
        self.model = model.eval()
        self.shape, self.class_names, self.run_dir = tuple(shape), class_names, run_dir
        self.conditioning = conditioning

    @property
    def num_classes(self) -> int | None:
        return self.conditioning.num_classes

    @property
    def takes_labels(self) -> bool:
        return self.conditioning.takes_labels

    @property
    def takes_prompts(self) -> bool:
        return self.conditioning.takes_prompts

    @property
    def device(self) -> torch.device:
        """Where the model is (``pipe.model.to(...)`` moves it); samples come back from there."""
        return next(self.model.parameters()).device

    def sample(self, n: int = 16, spec: SampleSpec | None = None, *, trajectory: bool = False,
               callback: Callable[[dict], None] | None = None, **settings) -> Tensor | SampleResult:
        """Draw ``n`` samples as ``spec`` says (``settings``: ``SampleSpec`` fields or sampler options
        that change it). Returns a tensor in the data range, or with ``trajectory=True`` a
        SampleResult with x_t and the predicted x0 of every step. The same spec gives the same samples.
        ``callback(d)`` sees every step as it happens (the sampler's dict: "i", "t", "x", "x0_hat"); an
        exception it raises stops the draw (the web page's cancel button).

        Sampling runs under ``torch.inference_mode`` (``torch.no_grad`` with classifier guidance,
        which differentiates the classifier); the results are normal tensors."""
        spec = SampleSpec.build(spec, **settings)
        check_count(n, "n")
        return self._run(lambda record: self._sample(n, spec, record), spec, trajectory, callback)

    def _run(self, draw, spec: SampleSpec, trajectory: bool,
             callback: Callable[[dict], None] | None = None) -> Tensor | SampleResult:
        """``draw(callback)`` without autograd, checked finite, as normal tensors (an inference tensor
        cannot enter autograd later); a SampleResult of its steps with ``trajectory``."""
        record = Trajectory() if trajectory else None
        step = record if callback is None else callback if record is None else _both(record, callback)
        with torch.no_grad() if spec.classifier_scale else torch.inference_mode():
            out = draw(step)
        out = self.check_finite(out).clone()
        return record.result(out) if trajectory else out

    def _sample(self, n: int, spec: SampleSpec, callback: Callable[[dict], None] | None) -> Tensor:
        raise NotImplementedError

    def check_finite(self, samples: Tensor) -> Tensor:
        """``samples``, refused when any value is NaN or inf (naming the weights or the settings as the
        cause), so that no grid or measurement is made of them."""
        return check_finite_samples(samples, self.model, str(self.run_dir or "this pipeline"))


class Pipeline(BasePipeline):
    """A trained Gaussian denoiser (EMA weights) and what is needed to sample from it.

    ``text`` = {"encoder", "max_length", "dim"} (config.json records it) makes it a text model that
    takes prompts; ``encoder``: that encoder already built (else loaded on first use)."""

    def __init__(self, denoiser: Denoiser, shape: tuple[int, ...], num_classes: int | None = None,
                 class_names: list[str] | None = None, run_dir: Path | None = None, *,
                 text: dict | None = None, encoder=None):
        super().__init__(denoiser, shape, conditioning_for(num_classes, text, encoder=encoder, run_dir=run_dir),
                         class_names, run_dir)
        self.text = text
        self.fast = FastCopies(denoiser)

    @property
    def denoiser(self) -> Denoiser:
        return self.model

    @property
    def process(self):
        return self.model.process

    @property
    def denoised_shape(self) -> tuple[int, ...]:
        """The shape the model denoises: the data's (a latent run's latents: ``LatentPipeline``)."""
        return self.shape

    def _sample(self, n: int, spec: SampleSpec, callback: Callable[[dict], None] | None) -> Tensor:
        from .cold.samplers import COLD_SAMPLERS

        name = spec.sampler or DEFAULT_SAMPLER
        if name in COLD_SAMPLERS:
            raise ValueError(f"sampler {name!r} is a cold-diffusion sampler, but this run's process is "
                             f"Gaussian ({self.process.config()['type']}); choose ddim, ddpm, ... "
                             "(`undiffuse samplers` lists them)")
        info = get_sampler(name)
        fast = self.fast.get(spec.bf16, spec.compile, self.device)
        gen = torch.Generator().manual_seed(spec.seed)
        ts = timesteps(self.process, spec.num_inference_steps or DEFAULT_STEPS, spec.spacing or info.spacing)
        x = self.process.prior((n, *self.denoised_shape), gen, t=ts[0]).to(self.device)  # drawn on the CPU: same samples
        cond = self.conditioning.condition(spec, n, self.device)
        model = self.conditioning.guided(fast, spec, cond)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=spec.bf16):
            out = info(model, x, ts, cond=cond, generator=gen, callback=callback, **spec.sampler_options)
        return out.float()
