"""The notebook API of a cold run (Bansal et al. 2022): ``undiffuse.load(run)`` gives a
``ColdPipeline`` when the run's process is a cold degradation.

    pipe = undiffuse.load("runs/blur")
    images = pipe.sample(16, sampler="improved", seed=0)           # generation: prior start + Alg. 2
    x_t = pipe.degrade(clean, t=10)                                 # D(x0, 10)
    restored = pipe.restore(x_t, t=10, sampler="improved")          # back to x0

Samplers (``undiffuse.cold.samplers``): "naive" (Algorithm 1), "improved" (Algorithm 2, the default)
and "direct" (one-shot ``R(x_t, t)``); the Gaussian samplers (ddim, ...) do not apply, nor do they
take a cold sampler. ``num_inference_steps`` is the number of restoration steps: that many evenly
spaced severities from t down to 0 (default, or any number >= t: every severity, as the paper).
``sample`` and ``restore`` take a ``SampleSpec`` (or its fields) as every pipeline does.

Generation starts from the run's prior: the Gaussian mixture over fully degraded training images in
``RUN/cold_prior.json`` (fitted when training starts), or the degradation's own end state (gaussian,
fade); a small Gaussian noise (``noise_std``, default 0.002) breaks the symmetry (``generate``).

Random degradations (mask, snow, fade, gaussian) need the state that produced ``x_t``: ``degrade``
and ``restore`` take ``state=``, and both default to the fixed state that ``D`` uses when no
generator is given, so ``restore(degrade(x0, t), t)`` matches.
"""
from __future__ import annotations

import warnings
from typing import Callable
from pathlib import Path

import torch
from torch import Tensor

from ..conditioning import conditioning_for
from ..pipeline import BasePipeline, SampleResult
from ..run_files import build_run_net, config_errors, load_checked
from ..samplers import SAMPLERS
from ..sampling import SampleSpec
from .degradations import State, degradation_from_config
from .prior import has_own_prior, read_prior
from .restorer import ColdRestorer
from .samplers import COLD_SAMPLERS, GENERATION_NOISE, cold_sample, generate

SAMPLE_OPTIONS = ("noise_std", "remove_noise")
DEFAULT_SAMPLER = "improved"


def check_cold_sampler(name: str, degradation) -> str:
    if name in COLD_SAMPLERS:
        return name
    if name in SAMPLERS:
        raise ValueError(f"sampler {name!r} is for Gaussian diffusion, but this run's process is the cold "
                         f"degradation {degradation.name!r}: choose one of {', '.join(COLD_SAMPLERS)}")
    raise ValueError(f"unknown cold sampler {name!r}; choose one of {', '.join(COLD_SAMPLERS)}")


class _Restore:
    """``R(x, t, cond)`` as the guidance wrappers take it: float32 out, the network under bf16
    autocast when asked (the degradation runs in float32 in the samplers)."""

    def __init__(self, restorer: ColdRestorer, bf16: bool):
        self.restorer, self.bf16, self.process = restorer, bf16, restorer.process

    def __call__(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.restorer(x, t, cond).float()


class ColdPipeline(BasePipeline):
    """A trained restorer (EMA weights), its degradation and generation prior (see the module
    docstring). ``model`` (also ``restorer``) is the ``ColdRestorer``; ``process`` the degradation."""

    can_restore = True

    def __init__(self, restorer: ColdRestorer, shape: tuple[int, ...], num_classes: int | None = None,
                 class_names: list[str] | None = None, run_dir: Path | None = None, prior=None):
        super().__init__(restorer, shape, conditioning_for(num_classes), class_names, run_dir)
        self._prior = prior

    @property
    def restorer(self) -> ColdRestorer:
        return self.model

    denoiser = restorer

    @property
    def degradation(self):
        return self.model.degradation

    process = degradation

    @property
    def prior(self):
        """The fitted ``GaussianMixturePrior`` (read from ``RUN/cold_prior.json``), or None."""
        if self._prior is None and self.run_dir is not None:
            self._prior = read_prior(self.run_dir)
        return self._prior

    @property
    def can_generate(self) -> bool:
        return self.prior is not None or has_own_prior(self.degradation, self.shape)

    def severities(self, steps: int | None = None, t: int | None = None) -> list[int]:
        """The decreasing severities from ``t`` (default T) to 0: ``steps`` evenly spaced steps, or
        every severity when ``steps`` is None or at least t."""
        big = self.degradation.num_steps
        t = big if t is None else int(t)
        if not 0 <= t <= big:
            raise ValueError(f"t must lie in 0..{big} (T of {self.degradation.name}), got {t}")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if steps is None or steps >= t:
            return list(range(t, -1, -1))
        return sorted({round(i * t / steps) for i in range(steps + 1)}, reverse=True)

    def restore_fn(self, spec: SampleSpec, n: int):
        """``restore(x, t) -> x0_hat`` with the spec's labels and classifier-free guidance on the
        predicted x0 (``x0_null + w (x0_cond - x0_null)``; 1: plain conditional, 0: the null class)."""
        if spec.spacing is not None:
            raise ValueError(f"spacing applies to Gaussian samplers; {spec.sampler or DEFAULT_SAMPLER} visits "
                             "evenly spaced severities (set num_inference_steps)")
        if spec.classifier_scale:
            raise ValueError("classifier guidance applies to Gaussian runs; a cold run has classifier-free "
                             "guidance only (guidance=w)")
        cond = self.conditioning.condition(spec, n)
        guided = self.conditioning.guided(_Restore(self.restorer, spec.bf16), spec, cond)
        return lambda x, t: guided(x, t, cond)

    def _sample(self, n: int, spec: SampleSpec, callback: Callable[[dict], None] | None) -> Tensor:
        """Generation: x_T from the prior, plus ``noise_std`` noise (default 0.002), restored with the
        spec's sampler in ``num_inference_steps`` steps. Options: ``noise_std``, ``remove_noise``."""
        sampler = check_cold_sampler(spec.sampler or DEFAULT_SAMPLER, self.degradation)
        unknown = sorted(set(spec.sampler_options) - set(SAMPLE_OPTIONS))
        if unknown:
            raise ValueError(f"cold sampler {sampler} has no option {', '.join(unknown)}; its options are "
                             f"noise_std (default {GENERATION_NOISE}), remove_noise")
        restore = self.restore_fn(spec, n)
        if not self.can_generate:
            raise ValueError(f"{self.run_dir or 'this pipeline'} has no generation prior ({self.degradation.name} "
                             "has no built-in one and no cold_prior.json was fitted); restore() still works")
        return generate(restore, self.degradation, n, prior=self.prior, shape=self.shape, sampler=sampler,
                        generator=torch.Generator().manual_seed(spec.seed),
                        severities=self.severities(spec.num_inference_steps), callback=callback,
                        **spec.sampler_options).float()

    def degrade(self, images: Tensor, t: int | None = None, *, generator: torch.Generator | None = None,
                state: State = None) -> Tensor:
        """``D(images, t)`` (t default T); random degradations draw their state from ``generator``
        unless ``state`` is given (neither: the degradation's fixed private-seed state)."""
        t = self.degradation.num_steps if t is None else t
        return self.degradation(images.float(), t, generator=generator, state=state)

    def restore(self, images: Tensor, t: int | None = None, sampler: str | None = None, *,
                spec: SampleSpec | None = None, state: State = None, trajectory: bool = False,
                algorithm: str | None = None, **settings) -> Tensor | SampleResult:
        """Restore ``images`` degraded at severity ``t`` (default T) with ``sampler`` ("improved":
        Algorithm 2, the default; "naive": Algorithm 1; "direct": one network call) in the spec's
        ``num_inference_steps``. ``state``: the random state that degraded them (module docstring).
        ``algorithm=`` is the deprecated name of ``sampler=``."""
        if algorithm is not None:
            warnings.warn("algorithm= is deprecated; use sampler= (it will be removed in the next release)",
                          FutureWarning, stacklevel=2)
            sampler = algorithm
        spec = SampleSpec.build(spec, **settings, **({} if sampler is None else {"sampler": sampler}))
        name = check_cold_sampler(spec.sampler or DEFAULT_SAMPLER, self.degradation)
        images = torch.as_tensor(images).float()
        if images.ndim != 4 or tuple(images.shape[1:2]) != tuple(self.shape[:1]):
            raise ValueError(f"expected images of shape (B, {self.shape[0]}, H, W), got {tuple(images.shape)}")
        severities = self.severities(spec.num_inference_steps, t)
        restore = self.restore_fn(spec, len(images))
        return self._run(lambda record: cold_sample(restore, self.degradation, images, sampler=name,
                                                    severities=severities, state=state, callback=record).float(),
                         spec, trajectory)


def load_cold(run_dir: Path, cfg: dict, ckpt: Path, weights: str = "ema") -> ColdPipeline:
    """The ColdPipeline of a cold run directory (``undiffuse.load`` calls this)."""
    net = build_run_net(cfg, run_dir / "config.json")
    with config_errors(run_dir / "config.json", "'process' or 'denoiser'"):
        restorer = ColdRestorer(net, degradation_from_config(cfg["process"]),
                                residual=bool(cfg["denoiser"].get("residual", False)),
                                standardize=bool(cfg["denoiser"].get("standardize_input", False)))
    load_checked(restorer, ckpt / f"{weights}.safetensors")
    data = cfg["data"]
    return ColdPipeline(restorer, data["shape"], data["num_classes"], data.get("class_names"), run_dir)
