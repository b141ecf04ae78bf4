"""One dataclass configures a training run; named presets fill it in.

The config is saved as JSON in the run directory and compared on ``--resume``.

``process`` is a Gaussian forward process ("ddpm:cosine:1000", "vp", "ve", "edm") or a cold
degradation of Bansal et al. 2022 ("blur", "mask", "pixelate", "desaturate", "snow", "fade",
"gaussian", with settings as in "blur:T=20:sigma=7"; ``undiffuse.cold.degradations``). A cold run
trains a restoration network ``R(x_t, t) -> x0`` with the L1 loss by default, through the same
Trainer. Two fields default by process (``resolved`` fills them in, and the run saves the result):
``loss`` (l2 Gaussian, l1 cold) and ``sampler`` (ddim Gaussian, improved cold). The settings of
Gaussian diffusion that a cold run has no use for (``GAUSSIAN_ONLY``: prediction, weighting,
snr_gamma, learn_variance) must keep their default values for a cold process, or the config is
refused with an error naming them (prediction "x0" and weighting "uniform" are accepted too: they
say what a cold run does, and ``resolved`` sets them so); ``clip_x0`` is not used by cold runs.
``residual`` and ``standardize_input`` (``ColdRestorer``) are cold-only.

``text`` makes a text-to-image run (Gaussian processes only): the U-Net cross-attends to the
captions' token embeddings from the frozen encoder ``text_encoder`` (``undiffuse.text``) and adds
their pooled embedding to the noise embedding; ``caption_dropout`` is the probability of training on
the empty caption, so that one model serves classifier-free guidance (GLIDE). The data must carry
captions; class labels are then not used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from numbers import Integral, Real

from .checks import check_guidance, check_output_dir
from .denoiser import PARAMETERIZATIONS
from .distributed import DEVICES
from .losses import LOSSES, WEIGHTINGS
from .cold import is_cold
from .cold.degradations import make_degradation
from .cold.degradations.base import SEVERITY_WEIGHTINGS
from .cold.samplers import COLD_SAMPLERS

#: Gaussian-only settings and the values a cold process accepts for them (the defaults first).
GAUSSIAN_ONLY: dict[str, tuple] = {"prediction": ("v", "x0"), "weighting": ("min_snr", "uniform"),
                                   "snr_gamma": (5.0,), "learn_variance": (False,)}
#: The Python types a field's annotation allows (bools are no ints here: True is not a count).
_TYPES = {"int": Integral, "float": Real, "bool": bool, "str": str, "dict": dict, "None": type(None)}


@dataclass
class TrainConfig:
    # data and model
    data: str = "mnist"
    image_size: int | None = None
    channels: int | None = None  # image folders: 1 (grayscale) or 3 (RGB); default from the images
    on_bad_image: str = "error"  # image folders: "error" or "skip" unreadable files
    labels_from_subfolders: bool = False
    net: str | dict = "mnist-demo"
    process: str | dict = "ddpm:cosine:1000"
    prediction: str = "v"
    class_conditional: bool = True
    label_dropout: float = 0.1
    text: bool = False  # condition on the data's captions (text-to-image) instead of class labels
    text_encoder: str = "all-MiniLM-L6-v2"  # a name in undiffuse.text.ENCODERS
    caption_dropout: float = 0.1  # probability of training on the empty caption (for CFG)
    on_missing_caption: str = "error"  # image folders with text: "error", "warn" (empty caption) or "skip"
    caption_column: str = "text"  # image folders with text: the caption column of metadata.jsonl
    learn_variance: bool = False
    residual: bool = False  # cold processes only: the network predicts x0 - x_t (official --residual)
    standardize_input: bool = False  # cold processes only: the net sees (x_t - mu) / s, mu, log s
    severity_weighting: str = "uniform"  # cold processes only: how training draws t ("linear": P(t) ~ t)
    clip_x0: float | None = 1.0  # images only: clamp x0_hat to the data range while sampling
    # objective
    loss: str | None = None  # None: l2 for Gaussian processes, l1 (the paper's) for cold ones
    weighting: str = "min_snr"
    snr_gamma: float = 5.0
    # optimisation
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    lr_schedule: str = "cosine"
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = True
    channels_last: bool = False  # measured slower here in bf16 (docs/speed.md)
    # torch.compile (inductor) the network; falls back to eager with a warning when compilation
    # fails. Not part of the maths (results agree to rounding): a run may resume with either.
    compile: bool = False  # compiling costs minutes on 2 cores and does not pay back in a demo (docs/speed.md)
    # "auto": CUDA when available, else the CPU; or "cpu" / "cuda". Under torchrun each process
    # takes LOCAL_RANK's GPU. Not part of the maths: a run may resume on another device.
    device: str = "auto"
    seed: int = 0
    max_minutes: float | None = None  # stop early (with a checkpoint) after this much training time
    # outputs
    out: str = "runs/mnist"
    log_every: int = 25
    checkpoint_every: int = 500
    sample_every: int = 500
    num_samples: int = 100
    sampler: str | None = None  # None: ddim for Gaussian processes, improved for cold ones
    sample_steps: int = 50
    guidance: float = 2.0  # classifier-free guidance scale for the grids (conditional models)

    def validate(self) -> None:
        """Refuse any setting that would fail later or train something wrong, before any work."""
        self._validate_types()
        checks = [
            (self.prediction in PARAMETERIZATIONS, f"prediction must be one of {PARAMETERIZATIONS}"),
            (self.loss is None or self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.weighting in WEIGHTINGS, f"weighting must be one of {WEIGHTINGS}"),
            (self.lr_schedule in ("constant", "cosine"), "lr_schedule must be 'constant' or 'cosine'"),
            (self.steps >= 1, "steps must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay (--weight-decay) must be >= 0"),
            (self.snr_gamma > 0, "snr_gamma (--snr-gamma) must be > 0: min-SNR weighting caps the weight at gamma, and "
                                 "gamma <= 0 trains nothing (0) or pushes the model the wrong way (< 0)"),
            (self.clip_x0 is None or self.clip_x0 > 0, "clip_x0 must be > 0 (or None: no clamping)"),
            (0 <= self.label_dropout < 1, "label_dropout must be in [0, 1)"),
            (0 <= self.caption_dropout < 1, "caption_dropout must be in [0, 1)"),
            (self.on_missing_caption in ("error", "warn", "skip"),
             "on_missing_caption must be 'error', 'warn' or 'skip'"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.grad_clip > 0, "grad_clip must be > 0"),
            (min(self.log_every, self.checkpoint_every) >= 1, "log/checkpoint intervals must be >= 1"),
            (self.sample_every >= 0, "sample_every (--sample-every) must be >= 0 (0: only at the end)"),
            (self.num_samples >= 1, "num_samples (--num-samples) must be >= 1"),
            (self.sample_steps >= 1, "sample_steps (--sample-steps) must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid training config: {message}")
        try:
            check_guidance(self.guidance, "guidance (--guidance)")
            check_output_dir(self.out, "out (--out)")
        except ValueError as e:
            raise ValueError(f"invalid training config: {e}") from None
        if self.text and is_cold(self.process):
            raise ValueError(f"invalid training config: text conditioning is for Gaussian diffusion; the cold "
                             f"process {self.process!r} trains a restorer without captions; drop --text or "
                             "use a Gaussian process (ddpm, vp, ve, edm)")
        if is_cold(self.process):
            self._validate_cold()
        elif self.sampler in COLD_SAMPLERS:
            raise ValueError(f"invalid training config: sampler {self.sampler!r} is a cold-diffusion "
                             f"sampler, but process {self.process!r} is Gaussian; use ddim, ddpm, ... "
                             "(`undiffuse samplers`) or a cold process (blur, mask, ...)")
        if self.severity_weighting not in SEVERITY_WEIGHTINGS:
            raise ValueError(f"invalid training config: severity_weighting must be one of {SEVERITY_WEIGHTINGS}")
        cold_only = [name for name, on in (("residual", self.residual), ("standardize_input", self.standardize_input),
                                           ("severity_weighting", self.severity_weighting != "uniform")) if on]
        if cold_only and not is_cold(self.process):
            raise ValueError(f"invalid training config: {' and '.join(cold_only)} "
                             f"appl{'ies' if len(cold_only) == 1 else 'y'} to cold processes only "
                             "(Gaussian runs choose what the network predicts with prediction)")

    def _validate_types(self) -> None:
        """Every field of its annotated type (a config from JSON or Python may hold anything), and
        every number finite: inf or NaN passes every range check and breaks training later."""
        for f in fields(self):
            value, kinds = getattr(self, f.name), [_TYPES[k] for k in f.type.split(" | ")]
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, tuple(kinds)):
                raise ValueError(f"invalid training config: {f.name} must be {f.type.replace(' | ', ' or ')}, "
                                 f"got {value!r}")
            if isinstance(value, Real) and not math.isfinite(value):
                raise ValueError(f"invalid training config: {f.name} (--{f.name.replace('_', '-')}) must be "
                                 f"a finite number, got {value}")

    def _validate_cold(self) -> None:
        try:
            deg = make_degradation(self.process)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid training config: process {self.process!r}: {e}") from None
        wrong = [f"{k}={getattr(self, k)!r}" for k, ok in GAUSSIAN_ONLY.items() if getattr(self, k) not in ok]
        if wrong:
            raise ValueError(f"invalid training config: {', '.join(wrong)} applies to Gaussian diffusion "
                             f"only; the cold process {deg.name!r} trains a restorer R(x_t, t) -> x0 "
                             "with an L1 or L2 loss (--loss), uniform over t (--residual makes it "
                             "predict x0 - x_t); drop those settings")
        if self.sampler is not None and self.sampler not in COLD_SAMPLERS:
            raise ValueError(f"invalid training config: sampler {self.sampler!r} is for Gaussian "
                             f"diffusion; the cold process {deg.name!r} samples with "
                             f"{', '.join(COLD_SAMPLERS)}")

    @property
    def cold(self) -> bool:
        """Whether ``process`` is a cold degradation (not a Gaussian process)."""
        return is_cold(self.process)

    def resolved(self) -> "TrainConfig":
        """This config checked, with the process-dependent defaults filled in: loss l2 / l1 and
        sampler ddim / improved for a Gaussian / cold process; a cold one also records what it
        does, prediction "x0" and weighting "uniform". Trainers run (and save) this."""
        self.validate()
        if not self.cold:
            return replace(self, loss=self.loss or "l2", sampler=self.sampler or "ddim")
        return replace(self, loss=self.loss or "l1", sampler=self.sampler or "improved",
                       prediction="x0", weighting="uniform")

    def updated(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return replace(self, **changes)


#: Named starting points; `undiffuse train --preset NAME` and CLI flags override fields.
PRESETS: dict[str, TrainConfig] = {
    # The demo: recognisable class-conditional MNIST digits in minutes on 2 CPU cores
    # (choices and measurements in docs/mnist_recipe.md).
    "mnist": TrainConfig(),
    "digits": TrainConfig(data="digits", net="tiny", steps=2000, batch_size=128, out="runs/digits"),
    "toy2d": TrainConfig(data="toy2d", net={"type": "mlp"}, process="ddpm:linear:1000",
                         steps=3000, batch_size=256, lr=1e-3, bf16=False, out="runs/toy2d",
                         num_samples=2000),
    # Text-to-image on the procedural shapes (32x32 RGB, captions from their attributes): cross-
    # attention at 16x16 and 8x8, where "at the top left" can still be placed (docs/text.md).
    "shapes": TrainConfig(data="shapes", text=True, net="text-small", out="runs/shapes"),
    # Cold blur at the paper's MNIST setting (T = 20, 11 x 11, sigma 7) with the recipe the sweep
    # chose for a CPU budget (docs/cold.md): standardized input, residual prediction, and a generation
    # prior over the 25 lowest Fourier modes of the blurred digits instead of their means alone.
    "cold-blur": TrainConfig(process="blur:summary_modes=2", standardize_input=True, residual=True,
                             class_conditional=False, steps=3500, checkpoint_every=250, out="runs/cold-blur"),
    "ddpm-cifar10": TrainConfig(net="ddpm-cifar10", process="ddpm:linear:1000", lr=2e-4,
                                batch_size=128, steps=800_000, warmup_steps=5000, ema_decay=0.9999,
                                class_conditional=False, out="runs/cifar10"),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name])
