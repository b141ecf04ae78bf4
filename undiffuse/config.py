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

Each field's metadata (``_option``) holds what its `undiffuse train` flag is made of: help text,
choices, --help group; ``undiffuse.cli_flags`` generates the flags from it. A renamed field lists
its old names (``renamed_from``, collected in RENAMED): for one release ``TrainConfig(steps=...)``,
``cfg.updated(steps=...)``, ``cfg.steps`` and ``--steps`` still work, with a FutureWarning, and a run
saved under the old names loads and resumes as before (``upgrade_saved``, quietly).
"""
from __future__ import annotations

import math
import typing
import warnings
from dataclasses import dataclass, field, fields, replace
from functools import cache, partial, wraps
from numbers import Integral, Real
from typing import Any

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
_ABSTRACT: dict[type, type] = {int: Integral, float: Real}
LR_SCHEDULES = ("constant", "cosine")
ON_MISSING_CAPTION = ("error", "warn", "skip")
#: The groups of `undiffuse train --help`, in order: a field's metadata names its group by key.
GROUPS = {"data": "data", "model": "model and forward process", "text": "text-to-image (--text)",
          "cold": "cold diffusion (--process blur, mask, ...)", "objective": "training objective",
          "latent": "latent diffusion (--autoencoder) and undiffuse train-autoencoder",
          "optim": "optimisation", "hardware": "hardware and speed",
          "outputs": "outputs: checkpoints, logs, sample grids"}


def _option(group: str, default: Any, help: str, *, choices: tuple | None = None,
            renamed_from: tuple[str, ...] = (), cli: bool = True) -> Any:
    """A TrainConfig field with what its `undiffuse train` flag is made of (``undiffuse.cli_flags``):
    help text, choices (shown; ``validate`` checks them), its --help group, the deprecated names it
    had (still accepted, with a FutureWarning) and whether it is a flag at all."""
    assert group in GROUPS, group
    return field(default=default, metadata={"group": group, "help": help, "choices": choices,
                                            "renamed_from": renamed_from, "cli": cli})


# One maker per group, in GROUPS' order.
_data, _model, _text, _cold, _objective, _latent, _optim, _hardware, _outputs = (partial(_option, g) for g in GROUPS)


def _renamed(changes: dict[str, Any], *, warn: bool) -> dict[str, Any]:
    """``changes`` (field name -> value) with each deprecated name (RENAMED) replaced by its new one,
    warning (FutureWarning) when ``warn``; reading a saved run's config.json does not warn."""
    out = dict(changes)
    for old, new in RENAMED.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{old!r} is the deprecated name of {new!r}: give {new!r} only")
        if warn:
            warnings.warn(f"TrainConfig field {old!r} is deprecated and will be removed in the next release; "
                          f"use {new!r} (--{new.replace('_', '-')})", FutureWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


def upgrade_saved(train: dict[str, Any]) -> dict[str, Any]:
    """A run's saved training settings (config.json's "train") under today's field names: runs saved
    before a rename hold the old names (e.g. "steps", now "max_train_steps")."""
    return _renamed(train, warn=False)


def _with_old_names(cls: type) -> type:
    """Let the constructor take the deprecated names of renamed fields (with a FutureWarning), so that
    ``TrainConfig(steps=...)`` works for one more release."""
    init = cls.__init__

    @wraps(init)
    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **_renamed(kwargs, warn=True))

    cls.__init__ = __init__
    return cls


@_with_old_names
@dataclass
class TrainConfig:
    # data
    data: str = _data("mnist", "dataset: mnist, digits, photos, toy2d[:swissroll|8gaussians|moons|checkerboard], "
                               "or an image folder")
    image_size: int | None = _data(None, "resize images to this size (mnist is padded 28->32 by default)")
    channels: int | None = _data(None, "image folders: 1 (grayscale) or 3 (RGB); default: from the images")
    on_bad_image: str = _data("error", "image folders: 'error' on an unreadable image, or 'skip' it with a warning",
                              choices=("error", "skip"))
    labels_from_subfolders: bool = _data(False, "image folders: class labels from first-level sub-folders")
    # model and forward process
    net: str | dict = _model("mnist-demo", "network preset (ddpm-cifar10, mnist-small, tiny, ...) or 'mlp'")
    process: str | dict = _model("ddpm:cosine:1000", "forward process: ddpm[:linear|cosine|sigmoid[:N]], "
                                 "vp[:schedule], ve, edm; or a cold degradation (Bansal et al. 2022) blur, mask, "
                                 "pixelate, desaturate, snow, fade, gaussian, with settings as in blur:T=20:sigma=7 "
                                 "(`undiffuse samplers --cold` lists them)")
    prediction: str = _model("v", "what the network predicts", choices=PARAMETERIZATIONS)
    class_conditional: bool = _model(True, "condition on class labels when the data has them")
    label_dropout: float = _model(0.1, "probability of training on the null class (for classifier-free guidance)")
    # text-to-image
    text: bool = _text(False, "train a text-to-image model on the dataset's captions (shapes, mnist, or an image "
                              "folder with .txt captions or a metadata.jsonl): cross-attention to the caption's "
                              "tokens, class labels unused")
    text_encoder: str = _text("all-MiniLM-L6-v2", "the frozen text encoder whose token and pooled embeddings "
                              "condition the U-Net (a name in undiffuse.text.ENCODERS, shipped offline)")
    caption_dropout: float = _text(0.1, "probability of replacing a caption with the empty caption during training, "
                                   "so that the model also learns the unconditional prediction that classifier-free "
                                   "guidance needs (GLIDE uses 0.2)")
    on_missing_caption: str = _text("error", "image folders with --text: what to do with an image whose caption is "
                                    "missing or empty: 'error', 'warn' (count them and keep the images with the "
                                    "empty caption) or 'skip' (count them and leave the images out)",
                                    choices=ON_MISSING_CAPTION)
    caption_column: str = _text("text", "image folders with --text: the column of metadata.jsonl that holds the "
                                "captions (as in the Hugging Face imagefolder layout)")
    learn_variance: bool = _model(False, "learn the reverse-step variance (hybrid loss, DDPM only)")
    # cold diffusion
    residual: bool = _cold(False, "cold processes: the network predicts x0 - x_t instead of x0 (the official "
                                  "code's --residual)")
    standardize_input: bool = _cold(False, "cold processes: the network sees (x_t - mean) / std with the mean and "
                                           "log std as extra planes (keeps heavy blur's detail under bf16)")
    severity_weighting: str = _cold("uniform", "cold processes: how training draws severities t: uniform (the "
                                    "paper's) or linear (P(t) proportional to t, toward the hard levels)",
                                    choices=SEVERITY_WEIGHTINGS)
    prior_components: int = _cold(1, "cold processes: Gaussians in the generation prior fitted to the fully "
                                     "degraded training images (1: the paper's; more give more varied starts)")
    # Images only: clamp x0_hat to the data range while sampling. No flag: None (no clamping)
    # cannot be typed, and no run has needed another value.
    clip_x0: float | None = _model(1.0, "clamp the predicted x0 to [-clip_x0, clip_x0] while sampling", cli=False)
    # objective
    loss: str | None = _objective(None, "the training loss (default: l2; l1, the paper's, for a cold process)",
                                  choices=LOSSES)
    weighting: str = _objective("min_snr", "loss weighting over noise levels (min_snr: Hang et al. 2023)",
                                choices=WEIGHTINGS)
    snr_gamma: float = _objective(5.0, "gamma of min-SNR weighting")
    # latent diffusion (Rombach et al. 2022; undiffuse.latent)
    autoencoder: str | None = _latent(None, "train on the scaled latents of this autoencoder run (written by "
                                      "`undiffuse train-autoencoder`); samples are decoded to images")
    # A flag of train-autoencoder only (undiffuse.latent.cli).
    kl_weight: float = _latent(1e-6, "weight of KL(q(z|x) || N(0, I)) against the per-pixel reconstruction error "
                               "(1e-6: latent diffusion's KL-f autoencoders)", cli=False)
    # Set by `undiffuse train-autoencoder` (not a flag of train): the run trains the autoencoder.
    autoencoder_training: bool = _latent(False, "train the KL autoencoder --net instead of a denoiser", cli=False)
    # optimisation
    # 700: the demo reaches the FID-style of 1000 steps in 9.6 minutes from a fresh clone (docs/speed.md,
    # "Time to quality"); the shorter cosine decay anneals sooner, the quality at 700 is the same.
    max_train_steps: int = _optim(700, "total number of optimisation steps to train for",
                                  renamed_from=("steps",))
    batch_size: int = _optim(64, "images per step (under torchrun: the global batch, split over the processes)")
    lr: float = _optim(2e-3, "peak learning rate (AdamW)")
    lr_schedule: str = _optim("cosine", "learning-rate schedule after the warm-up", choices=LR_SCHEDULES)
    warmup_steps: int = _optim(100, "linear learning-rate warm-up steps")
    weight_decay: float = _optim(0.0, "AdamW weight decay")
    grad_clip: float = _optim(1.0, "clip the gradient norm to this value")
    ema_decay: float = _optim(0.999, "EMA decay of the weights used for sampling")
    bf16: bool = _hardware(True, "bf16 autocast (AMX on recent Intel CPUs)")
    # Measured slower here in bf16 (docs/speed.md).
    channels_last: bool = _hardware(False, "channels-last memory format for images")
    # Falls back to eager with a warning when compilation fails. Not part of the maths (results agree
    # to rounding): a run may resume with either. Compiling costs minutes on 2 cores and does not pay
    # back in a demo (docs/speed.md).
    compile: bool = _hardware(False, "torch.compile the network (inductor; falls back to eager with a warning)")
    # Not part of the maths: a run may resume on another device.
    device: str = _hardware("auto", "auto (CUDA when available, else the CPU), cpu or cuda; under torchrun each "
                                    "process takes the GPU of its LOCAL_RANK", choices=DEVICES)
    seed: int = _optim(0, "seed for initialisation, batches, noise and samples")
    max_minutes: float | None = _optim(None, "stop training early after this many minutes (a checkpoint is written)")
    # outputs
    out: str = _outputs("runs/mnist", "run directory (config, checkpoints, log, samples)")
    log_every: int = _outputs(25, "log every N steps")
    checkpoint_every: int = _outputs(500, "write a checkpoint every N steps")
    sample_every: int = _outputs(500, "write a sample grid every N steps (0: only at the end)")
    num_samples: int = _outputs(100, "images in each sample grid")
    sampler: str | None = _outputs(None, "sampler for the grids (default: ddim; improved for a cold process; "
                                         "`undiffuse samplers` lists them)")
    sample_steps: int = _outputs(50, "sampler steps for the grids")
    guidance: float = _outputs(2.0, "classifier-free guidance scale for the grids (1: plain conditional)")

    def validate(self) -> None:
        """Refuse any setting that would fail later or train something wrong, before any work."""
        self._validate_types()
        checks = [
            (self.prediction in PARAMETERIZATIONS, f"prediction must be one of {PARAMETERIZATIONS}"),
            (self.loss is None or self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.weighting in WEIGHTINGS, f"weighting must be one of {WEIGHTINGS}"),
            (self.lr_schedule in LR_SCHEDULES, "lr_schedule must be 'constant' or 'cosine'"),
            (self.max_train_steps >= 1, "max_train_steps (--max-train-steps) must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.device in DEVICES, f"device must be one of {DEVICES}"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay (--weight-decay) must be >= 0"),
            (self.snr_gamma > 0, "snr_gamma (--snr-gamma) must be > 0: min-SNR weighting caps the weight at gamma, and "
                                 "gamma <= 0 trains nothing (0) or pushes the model the wrong way (< 0)"),
            (self.clip_x0 is None or self.clip_x0 > 0, "clip_x0 must be > 0 (or None: no clamping)"),
            (0 <= self.label_dropout < 1, "label_dropout must be in [0, 1)"),
            (0 <= self.caption_dropout < 1, "caption_dropout must be in [0, 1)"),
            (self.on_missing_caption in ON_MISSING_CAPTION,
             "on_missing_caption must be 'error', 'warn' or 'skip'"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (self.warmup_steps >= 0, "warmup_steps must be >= 0"),
            (self.grad_clip > 0, "grad_clip must be > 0"),
            (min(self.log_every, self.checkpoint_every) >= 1, "log/checkpoint intervals must be >= 1"),
            (self.sample_every >= 0, "sample_every (--sample-every) must be >= 0 (0: only at the end)"),
            (self.num_samples >= 1, "num_samples (--num-samples) must be >= 1"),
            (self.sample_steps >= 1, "sample_steps (--sample-steps) must be >= 1"),
            (self.prior_components >= 1, "prior_components (--prior-components) must be >= 1"),
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
        if self.autoencoder_training or self.autoencoder is not None:
            self._validate_latent()
        if is_cold(self.process):
            self._validate_cold()
        elif self.sampler in COLD_SAMPLERS:
            raise ValueError(f"invalid training config: sampler {self.sampler!r} is a cold-diffusion "
                             f"sampler, but process {self.process!r} is Gaussian; use ddim, ddpm, ... "
                             "(`undiffuse samplers`) or a cold process (blur, mask, ...)")
        if self.severity_weighting not in SEVERITY_WEIGHTINGS:
            raise ValueError(f"invalid training config: severity_weighting must be one of {SEVERITY_WEIGHTINGS}")
        cold_only = [name for name, on in (("residual", self.residual), ("standardize_input", self.standardize_input),
                                           ("severity_weighting", self.severity_weighting != "uniform"),
                                           ("prior_components", self.prior_components != 1)) if on]
        if cold_only and not is_cold(self.process):
            raise ValueError(f"invalid training config: {' and '.join(cold_only)} "
                             f"appl{'ies' if len(cold_only) == 1 else 'y'} to cold processes only "
                             "(Gaussian runs choose what the network predicts with prediction)")

    def _validate_types(self) -> None:
        """Every field of its annotated type (a config from JSON or Python may hold anything), and
        every number finite: inf or NaN passes every range check and breaks training later."""
        for f in fields(self):
            value, kinds = getattr(self, f.name), [_ABSTRACT.get(t, t) for t in field_types(f.name)]
            if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, tuple(kinds)):
                raise ValueError(f"invalid training config: {f.name} must be {f.type.replace(' | ', ' or ')}, "
                                 f"got {value!r}")
            if isinstance(value, Real) and not math.isfinite(value):
                raise ValueError(f"invalid training config: {f.name} (--{f.name.replace('_', '-')}) must be "
                                 f"a finite number, got {value}")

    def _validate_latent(self) -> None:
        """An autoencoder run trains on images alone; a latent run is Gaussian diffusion on latents."""
        if self.autoencoder_training and (self.cold or self.text or self.autoencoder is not None):
            raise ValueError("invalid training config: train-autoencoder trains on images alone; drop the cold "
                             "--process, --text and --autoencoder (they are for `undiffuse train`)")
        if self.cold:
            raise ValueError(f"invalid training config: --autoencoder trains Gaussian diffusion on latents, but "
                             f"{self.process!r} is a cold degradation of images; use ddpm, vp, ve or edm")
        if self.kl_weight < 0:
            raise ValueError(f"invalid training config: kl_weight (--kl-weight) must be >= 0, got {self.kl_weight}")

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
        if self.autoencoder_training:  # L1: latent diffusion's reconstruction term (sharper than L2)
            return replace(self, loss=self.loss or "l1", sampler=None)
        if self.autoencoder is not None:  # latents are not in [-1, 1]: no clamping of x0_hat
            return replace(self, loss=self.loss or "l2", sampler=self.sampler or "ddim", clip_x0=None)
        if not self.cold:
            return replace(self, loss=self.loss or "l2", sampler=self.sampler or "ddim")
        return replace(self, loss=self.loss or "l1", sampler=self.sampler or "improved",
                       prediction="x0", weighting="uniform")

    def updated(self, **changes) -> "TrainConfig":
        """A copy with ``changes`` (field name -> value; a deprecated name warns and still works)."""
        changes = _renamed(changes, warn=True)
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        return replace(self, **changes)


#: Deprecated field name -> today's (each field's metadata "renamed_from"), kept for one release.
RENAMED: dict[str, str] = {old: f.name for f in fields(TrainConfig) for old in f.metadata["renamed_from"]}


def _old_name(old: str, new: str) -> property:
    """``cfg.<old>``: reads and sets ``cfg.<new>``, with a FutureWarning."""
    def warn() -> None:
        warnings.warn(f"TrainConfig.{old} is deprecated and will be removed in the next release; use "
                      f"TrainConfig.{new}", FutureWarning, stacklevel=3)

    def get(self: TrainConfig) -> Any:
        warn()
        return getattr(self, new)

    def set_(self: TrainConfig, value: Any) -> None:
        warn()
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated name of ``{new}``.")


for _old, _new in RENAMED.items():
    setattr(TrainConfig, _old, _old_name(_old, _new))


@cache
def field_types(name: str) -> tuple[type, ...]:
    """The types a TrainConfig field's annotation allows, e.g. (int, NoneType) for ``int | None``."""
    hint = typing.get_type_hints(TrainConfig)[name]
    return typing.get_args(hint) or (hint,)


#: Named starting points; `undiffuse train --preset NAME` and CLI flags override fields.
PRESETS: dict[str, TrainConfig] = {
    # The demo: recognisable class-conditional MNIST digits in minutes on 2 CPU cores
    # (choices and measurements in docs/mnist_recipe.md).
    "mnist": TrainConfig(),
    "digits": TrainConfig(data="digits", net="tiny", max_train_steps=2000, batch_size=128, out="runs/digits"),
    "toy2d": TrainConfig(data="toy2d", net={"type": "mlp"}, process="ddpm:linear:1000",
                         max_train_steps=3000, batch_size=256, lr=1e-3, bf16=False, out="runs/toy2d",
                         num_samples=2000),
    # Text-to-image on the procedural shapes (32x32 RGB, captions from their attributes): cross-
    # attention at 16x16 and 8x8, where "at the top left" can still be placed (docs/text.md).
    "shapes": TrainConfig(data="shapes", text=True, net="text-small", max_train_steps=1000, out="runs/shapes"),
    # Cold blur at the paper's MNIST setting (T = 20, 11 x 11, sigma 7) with the recipe the sweep
    # chose for a CPU budget (docs/cold.md): standardized input, residual prediction, the L2 loss (at
    # 3500 steps Algorithm 2 restores at FID-style 12.2 against L1's 29.5), and a generation prior of 10
    # Gaussians over the 25 lowest Fourier modes of the blurred digits (the size prior-sweep chose).
    "cold-blur": TrainConfig(process="blur:summary_modes=2", standardize_input=True, residual=True, loss="l2",
                             prior_components=10,
                             class_conditional=False, max_train_steps=3500, checkpoint_every=250,
                             out="runs/cold-blur"),
    "ddpm-cifar10": TrainConfig(net="ddpm-cifar10", process="ddpm:linear:1000", lr=2e-4,
                                batch_size=128, max_train_steps=800_000, warmup_steps=5000, ema_decay=0.9999,
                                class_conditional=False, out="runs/cifar10"),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name])
