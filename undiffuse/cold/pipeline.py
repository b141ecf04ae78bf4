"""The notebook API of a cold run (Bansal et al. 2022): ``undiffuse.load(run)`` gives a
``ColdPipeline`` when the run's process is a cold degradation.

    pipe = undiffuse.load("runs/blur")
    images = pipe.sample(16, sampler="improved", seed=0)           # generation: prior start + Alg. 2
    x_t = pipe.degrade(clean, t=10)                                 # D(x0, 10)
    restored = pipe.restore(x_t, t=10, algorithm="improved")        # back to x0

Samplers (``undiffuse.cold.samplers``): "naive" (Algorithm 1), "improved" (Algorithm 2, the default)
and "direct" (one-shot ``R(x_t, t)``); the Gaussian samplers (ddim, ...) do not apply, nor do they
take a cold sampler. ``steps`` is the number of restoration steps: that many evenly spaced
severities from t down to 0 (default, or any number >= t: every severity, as the paper).

Generation starts from the run's prior: the Gaussian mixture over fully degraded training images in
``RUN/cold_prior.json`` (fitted when training starts), or the degradation's own end state (gaussian,
fade); a small Gaussian noise (``noise_std``, default 0.002) breaks the symmetry (``generate``).

Random degradations (mask, snow, fade, gaussian) need the state that produced ``x_t``: ``degrade``
and ``restore`` take ``state=``, and both default to the fixed state that ``D`` uses when no
generator is given, so ``restore(degrade(x0, t), t)`` matches.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..checks import check_guidance, check_sample_settings
from ..pipeline import Pipeline, SampleResult
from .degradations import State, degradation_from_config
from .restorer import ColdRestorer
from ..run_files import build_run_net, config_errors, load_checked
from ..samplers import SAMPLERS
from .samplers import COLD_SAMPLERS, GENERATION_NOISE, cold_sample, generate
from .prior import has_own_prior, read_prior

SAMPLE_OPTIONS = ("noise_std", "remove_noise")


def check_cold_sampler(name: str, degradation) -> str:
    if name in COLD_SAMPLERS:
        return name
    if name in SAMPLERS:
        raise ValueError(f"sampler {name!r} is for Gaussian diffusion, but this run's process is the cold "
                         f"degradation {degradation.name!r}: choose one of {', '.join(COLD_SAMPLERS)}")
    raise ValueError(f"unknown cold sampler {name!r}; choose one of {', '.join(COLD_SAMPLERS)}")


class ColdPipeline(Pipeline):
    """A trained restorer (EMA weights), its degradation and generation prior (see the module
    docstring). ``denoiser`` holds the ``ColdRestorer``; ``process`` is the degradation."""

    def __init__(self, restorer: ColdRestorer, shape: tuple[int, ...], num_classes: int | None = None,
                 class_names: list[str] | None = None, run_dir: Path | None = None, prior=None):
        super().__init__(restorer, shape, num_classes, class_names, run_dir)
        self._prior = prior

    @property
    def restorer(self) -> ColdRestorer:
        return self.denoiser

    @property
    def degradation(self):
        return self.denoiser.degradation

    @property
    def process(self):
        return self.denoiser.degradation

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

    def restore_fn(self, cond: Tensor | None, guidance: float = 1.0, bf16: bool = False):
        """``restore(x, t) -> x0_hat`` with classifier-free guidance ``guidance`` on the predicted x0
        (``x0_null + w (x0_cond - x0_null)``; 1: plain conditional, 0: the null class)."""
        check_guidance(guidance, "guidance")
        r, null = self.denoiser, self.num_classes
        if guidance != 1.0 and (cond is None or null is None):
            raise ValueError("guidance needs a class-conditional model and class labels")

        def call(x, t, c):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return r(x, t, c).float()

        if guidance == 1.0:
            return lambda x, t: call(x, t, cond)
        nulls = torch.full_like(cond, null)
        if guidance == 0.0:
            return lambda x, t: call(x, t, nulls)

        def guided(x, t):
            c, u = call(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, nulls])).chunk(2)
            return u + guidance * (c - u)
        return guided

    @torch.no_grad()
    def sample(self, n: int = 16, *, sampler: str = "improved", steps: int | None = None,
               spacing: str | None = None, seed: int = 0,
               class_labels: Tensor | list[int] | int | None = None, guidance: float = 1.0,
               classifier_scale: float = 0.0, bf16: bool = False, trajectory: bool = False,
               **options) -> Tensor | SampleResult:
        """Generate ``n`` images: draw x_T from the prior, add ``noise_std`` noise, restore with
        ``sampler`` in ``steps`` steps. ``options``: ``noise_std`` (default 0.002), ``remove_noise``.
        Same seed, same images; ``trajectory=True`` gives a SampleResult (x_t and predicted x0 at
        each step, ts = t / T)."""
        check_sample_settings(n, steps=steps, guidance=guidance, classifier_scale=classifier_scale, options=options)
        check_cold_sampler(sampler, self.degradation)
        _gaussian_only(spacing, classifier_scale, sampler)
        unknown = sorted(set(options) - set(SAMPLE_OPTIONS))
        if unknown:
            raise ValueError(f"cold sampler {sampler} has no option {', '.join(unknown)}; its options are "
                             f"noise_std (default {GENERATION_NOISE}), remove_noise")
        if not self.can_generate:
            raise ValueError(f"{self.run_dir or 'this pipeline'} has no generation prior ({self.degradation.name} "
                             "has no built-in one and no cold_prior.json was fitted); restore() still works")
        cond = self.labels_for(class_labels, n)
        restore = self.restore_fn(cond, guidance, bf16)
        xs, x0s, ts = [], [], []
        callback = (lambda d: (xs.append(d["x"].float()), x0s.append(d["x0_hat"].float()), ts.append(d["t"]))) \
            if trajectory else None
        out = generate(restore, self.degradation, n, prior=self.prior, shape=self.shape, algorithm=sampler,
                       generator=torch.Generator().manual_seed(seed), severities=self.severities(steps),
                       callback=callback, **options).float()
        self.check_finite(out)
        return SampleResult(out, xs, x0s, ts) if trajectory else out

    def degrade(self, images: Tensor, t: int | None = None, *, generator: torch.Generator | None = None,
                state: State = None) -> Tensor:
        """``D(images, t)`` (t default T); random degradations draw their state from ``generator``
        unless ``state`` is given (neither: the degradation's fixed private-seed state)."""
        t = self.degradation.num_steps if t is None else t
        return self.degradation(images.float(), t, generator=generator, state=state)

    @torch.no_grad()
    def restore(self, images: Tensor, t: int | None = None, algorithm: str = "improved", *,
                steps: int | None = None, state: State = None,
                class_labels: Tensor | list[int] | int | None = None, guidance: float = 1.0,
                bf16: bool = False, trajectory: bool = False) -> Tensor | SampleResult:
        """Restore ``images`` degraded at severity ``t`` (default T) with ``algorithm`` ("improved":
        Algorithm 2, "naive": Algorithm 1, "direct": one network call) in ``steps`` steps.
        ``state``: the random state that degraded them (see the module docstring)."""
        check_cold_sampler(algorithm, self.degradation)
        images = torch.as_tensor(images).float()
        if images.ndim != 4 or tuple(images.shape[1:2]) != tuple(self.shape[:1]):
            raise ValueError(f"expected images of shape (B, {self.shape[0]}, H, W), got {tuple(images.shape)}")
        restore = self.restore_fn(self.labels_for(class_labels, len(images)), guidance, bf16)
        xs, x0s, ts = [], [], []
        callback = (lambda d: (xs.append(d["x"].float()), x0s.append(d["x0_hat"].float()), ts.append(d["t"]))) \
            if trajectory else None
        out = cold_sample(restore, self.degradation, images, algorithm=algorithm,
                          severities=self.severities(steps, t), state=state, callback=callback).float()
        self.check_finite(out)
        return SampleResult(out, xs, x0s, ts) if trajectory else out

    def save_restorations(self, images: Tensor, path: str | Path, t: int | None = None, *, seed: int = 0,
                          steps: int | None = None) -> Path:
        """A restoration strip: rows x0, D(x0, t), Algorithm 1, Algorithm 2, direct (null class for
        conditional models; random degradations draw their state from ``seed``)."""
        from ..viz import save_labelled_grid

        t = self.degradation.num_steps if t is None else int(t)
        state = self.degradation.sample_state(images.shape, torch.Generator().manual_seed(seed))
        x_t = self.degrade(images, t, state=state)
        rows = [images.float(), x_t] + [self.restore(x_t, t, a, steps=steps, state=state)
                                         for a in ("naive", "improved", "direct")]
        return save_labelled_grid(rows, path, ["x0", f"D(x0, {t})", "Alg. 1", "Alg. 2", "direct"])


def _gaussian_only(spacing, classifier_scale, sampler) -> None:
    if spacing is not None:
        raise ValueError(f"spacing applies to Gaussian samplers; {sampler} visits evenly spaced severities "
                         "(set steps)")
    if classifier_scale:
        raise ValueError("classifier guidance applies to Gaussian runs; a cold run has classifier-free "
                         "guidance only (guidance=w)")


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
