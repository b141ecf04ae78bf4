"""The notebook-facing API: ``undiffuse.train(config)`` and ``undiffuse.load(run_dir).sample(...)``.

A run whose process is a cold degradation (``--process blur``, ...) loads as a ``ColdPipeline``
(``undiffuse.cold.pipeline``): the same ``sample`` with the cold samplers, plus ``restore``.

A text-to-image run (``--text``) samples from prompts: ``pipe.sample(16, prompts="a red circle",
guidance=3, negative_prompt="a blue square")``; its frozen text encoder is loaded on first use.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .checkpoint import latest_checkpoint
from .checks import check_finite_samples, check_sample_settings
from .compiling import call_or_fall_back, compile_net
from .config import TrainConfig
from .denoiser import Denoiser
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .cold import is_cold
from .processes import from_config
from .rundir import check_run_dir
from .run_files import build_run_net, config_errors, load_checked, read_run_config
from .samplers import get_sampler, timesteps
from .cold.samplers import COLD_SAMPLERS
# Imported here, not lazily in train(): the first import of the submodule undiffuse.train sets the
# package attribute `undiffuse.train` to that module, which must happen before undiffuse/__init__
# binds the name to the train() function below, or `undiffuse.train(...)` stops being callable.
from .trainer import Trainer


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


class Pipeline:
    """A trained denoiser (EMA weights) plus what is needed to sample from it.

    A text model has ``text`` = {"encoder", "max_length", "dim"} (the run's config.json records it)
    and takes prompts; ``encoder`` is that encoder already built (else loaded on first use).
    """

    def __init__(self, denoiser: Denoiser, shape: tuple[int, ...], num_classes: int | None = None,
                 class_names: list[str] | None = None, run_dir: Path | None = None, *,
                 text: dict | None = None, encoder=None):
        self.denoiser = denoiser.eval()
        self.shape, self.num_classes, self.class_names = tuple(shape), num_classes, class_names
        self.run_dir = run_dir
        self.text, self._encoder = text, encoder
        self._classifier = None  # RUN/classifier, loaded on first use by classifier guidance
        self._fast: dict[tuple[bool, bool, torch.device], Denoiser] = {}  # bf16 / compiled copies (fast_denoiser)
        self._fast_version = -1

    #: bf16 sampling keeps a bf16 copy of the weights (measured faster than casting them in every
    #: call under autocast, docs/speed.md); False: autocast alone, over the float32 weights.
    bf16_weights = True

    @property
    def process(self):
        return self.denoiser.process

    @property
    def is_text(self) -> bool:
        """Whether this model is conditioned on text (takes prompts, not class labels)."""
        return self.text is not None

    def sample(self, n: int = 16, *, sampler: str = "ddim", steps: int = 50,
               spacing: str | None = None, seed: int = 0,
               class_labels: Tensor | list[int] | int | None = None, guidance: float = 1.0,
               prompts: str | list[str] | None = None, negative_prompt: str | list[str] | None = None,
               classifier_scale: float = 0.0, bf16: bool = False, trajectory: bool = False,
               compile: bool = False, **options) -> Tensor | SampleResult:
        """Draw ``n`` samples with ``sampler`` (``undiffuse.samplers.SAMPLERS``) in ``steps`` steps
        on the ``spacing`` schedule (default: the sampler's own, see ``SamplerInfo.spacing``).

        ``class_labels``: one label for all, a list, or None (the null class for conditional
        models). ``prompts`` (text models): one prompt for all, a list of ``n``, or None (the empty
        caption: unconditional samples). ``guidance``: classifier-free guidance scale w (1 = plain
        conditional, 0 = unconditional). ``negative_prompt`` (text models, w != 1): one or ``n``
        captions to guide away from, in place of the empty caption. ``classifier_scale``:
        classifier guidance with the run's noisy classifier (``undiffuse train-classifier``) on top.
        ``options`` go to the sampler (e.g. ``eta``). Returns a tensor in the data range, or a
        SampleResult with the intermediate x_t and predicted x0 when ``trajectory=True``.

        Speed (docs/speed.md): ``bf16`` runs the network under bf16 autocast with a bf16 copy of
        the weights (no per-call weight casts); ``compile`` runs a ``torch.compile``-d copy (eager,
        with a warning, where compilation fails). Sampling runs under ``torch.inference_mode``
        (``torch.no_grad`` with classifier guidance, which differentiates the classifier).
        """
        check_sample_settings(n, steps=steps, guidance=guidance, classifier_scale=classifier_scale, options=options)
        grad_free = torch.no_grad() if classifier_scale else torch.inference_mode()
        with grad_free:
            out = self._sample(n, sampler, steps, spacing, seed, class_labels, guidance, prompts, negative_prompt,
                               classifier_scale, bf16, trajectory, compile, options)
        self.check_finite(out.x0 if isinstance(out, SampleResult) else out)
        # Normal tensors: an inference tensor cannot enter autograd or be changed in place later.
        if isinstance(out, SampleResult):
            out.x0, out.xs, out.x0_hats = out.x0.clone(), [x.clone() for x in out.xs], [x.clone() for x in out.x0_hats]
            return out
        return out.clone()

    def _sample(self, n, sampler, steps, spacing, seed, class_labels, guidance, prompts, negative_prompt,
                classifier_scale, bf16, trajectory, compile, options) -> Tensor | SampleResult:
        if sampler in COLD_SAMPLERS:
            raise ValueError(f"sampler {sampler!r} is a cold-diffusion sampler, but this run's process is "
                             f"Gaussian ({self.process.config()['type']}); choose ddim, ddpm, ... "
                             "(`undiffuse samplers` lists them)")
        info = get_sampler(sampler)
        fast = self.fast_denoiser(bf16, compile)
        gen = torch.Generator().manual_seed(seed)
        ts = timesteps(self.process, steps, spacing or info.spacing)
        device = self.device
        x = self.process.prior((n, *self.shape), gen, t=ts[0]).to(device)  # drawn on the CPU: same samples
        if self.is_text:
            if class_labels is not None:
                raise ValueError("this model is text-conditional: it takes prompts, not class labels")
            cond = self.embed(prompts, n)
            denoiser = self.guided_text(cond if prompts is not None else None, guidance, negative_prompt,
                                        classifier_scale, base=fast)
        else:
            if prompts is not None or negative_prompt is not None:
                raise ValueError("this model is not text-conditional: it takes no prompts (train one with --text)")
            cond = self.labels_for(class_labels, n)
            cond = None if cond is None else cond.to(device)
            denoiser = self.guided(cond, guidance, classifier_scale, base=fast)
        xs, x0s = [], []
        callback = (lambda d: (xs.append(d["x"].float()), x0s.append(d["x0_hat"].float()))) \
            if trajectory else None
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = info(denoiser, x, ts, cond=cond, generator=gen, callback=callback, **options)
        out = out.float()
        if not trajectory:
            return out
        return SampleResult(out, xs, x0s, ts[:len(xs)].tolist())

    def check_finite(self, samples: Tensor) -> Tensor:
        """``samples``, refused when any value is NaN or inf (naming the weights or the settings as the
        cause), so that no grid or measurement is made of them."""
        return check_finite_samples(samples, self.denoiser, str(self.run_dir or "this pipeline"))

    def fast_denoiser(self, bf16: bool = False, compile: bool = False) -> Denoiser:
        """The denoiser to sample with: this one, or a copy with bf16 weights and / or compiled.
        Copies are cached per device until the weights change (their in-place version counters move)."""
        if not (bf16 and self.bf16_weights) and not compile:
            return self.denoiser
        version = sum(p._version for p in self.denoiser.parameters())
        if version != self._fast_version:
            self._fast, self._fast_version = {}, version
        key = (bf16 and self.bf16_weights, compile, self.device)
        if key not in self._fast:
            d = self.denoiser
            net = bf16_inference_copy(d.net) if key[0] else copy.deepcopy(d.net)
            fast = Denoiser(net, d.process, d.prediction, sigma_data=d.sigma_data,
                            learn_variance=d.learn_variance, clip_x0=d.clip_x0).eval()
            if compile:
                compile_net(net)
                fast = _EagerOnFailure(fast)
            self._fast[key] = fast
        return self._fast[key]

    def guided(self, cond: Tensor | None, guidance: float = 1.0, classifier_scale: float = 0.0, *,
               base: Denoiser | None = None):
        """The denoiser (``base``, default this pipeline's) with classifier-free guidance w and
        classifier guidance s applied."""
        denoiser = self.denoiser if base is None else base
        if guidance != 1.0 or classifier_scale:
            if cond is None or self.num_classes is None:
                raise ValueError("guidance needs a class-conditional model and class labels")
        if guidance == 0.0:
            denoiser = _NullCondition(denoiser, self.num_classes)
        elif guidance != 1.0:
            denoiser = ClassifierFreeGuidance(denoiser, guidance, null_cond=self.num_classes)
        if classifier_scale:
            denoiser = ClassifierGuidance(denoiser, self.classifier(), classifier_scale, pass_cond=True)
        return denoiser

    def guided_text(self, cond, guidance: float = 1.0, negative_prompt: str | list[str] | None = None,
                    classifier_scale: float = 0.0, *, base: Denoiser | None = None):
        """A text model's denoiser with classifier-free guidance w; ``cond`` is None without prompts.
        The unconditional pass sees the empty caption, or ``negative_prompt`` in its place."""
        denoiser = self.denoiser if base is None else base
        if classifier_scale:
            raise ValueError("classifier guidance needs class labels; a text model is guided by its prompts "
                             "(--guidance)")
        if guidance == 1.0:
            if negative_prompt is not None:
                raise ValueError("a negative prompt acts through classifier-free guidance and has no effect at "
                                 "guidance 1; use --guidance > 1 (e.g. 3) or drop the negative prompt")
            return denoiser
        if cond is None:
            raise ValueError("classifier-free guidance needs prompts (without them the samples are unconditional)")
        n = len(cond)
        null = self.embed(negative_prompt, n, what="negative prompts")
        if guidance == 0.0:
            return _NullCondition(denoiser, null)
        return ClassifierFreeGuidance(denoiser, guidance, null_cond=null)

    @property
    def device(self) -> torch.device:
        """Where the model is (``pipe.denoiser.to(...)`` moves it); samples come back from there."""
        return next(self.denoiser.parameters()).device

    @property
    def encoder(self):
        """The run's frozen text encoder (``undiffuse.text.get_encoder``), loaded on first use."""
        if self._encoder is None:
            if not self.is_text:
                raise ValueError("this model is not text-conditional: it has no text encoder")
            from .text.encoders import get_encoder

            with torch.random.fork_rng(devices=[]):  # loading must not move the global RNG
                encoder = get_encoder(self.text["encoder"])
                if encoder.max_length != self.text["max_length"]:
                    encoder = get_encoder(self.text["encoder"], max_length=self.text["max_length"])
            if encoder.dim != self.text["dim"]:
                raise ValueError(f"text encoder {encoder.name!r} gives {encoder.dim}-d embeddings, but this model "
                                 f"was trained on {self.text['dim']}-d ones; register the encoder it was trained with")
            self._encoder = encoder
        return self._encoder

    def embed(self, prompts: str | list[str] | None, n: int, what: str = "prompts"):
        """The text embedding of ``n`` prompts: one (repeated), a list of n, or None (the empty caption)."""
        from .text.encoders import NULL_CAPTION, encode_captions

        if prompts is None:
            prompts = NULL_CAPTION
        device = self.device  # the encoder runs on the CPU; the net may not
        if isinstance(prompts, str):
            return encode_captions(self.encoder, [prompts]).repeat(n).to(device)
        prompts = list(prompts)
        if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{what} must be one string (used for every sample) or a list of {n} strings, one "
                             f"per sample; got {len(prompts)} items")
        return encode_captions(self.encoder, prompts).to(device)

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
                        class_label: int | None = None, guidance: float = 1.0,
                        prompts: list[str] | None = None, **sample_options) -> Path:
        """The picture that explains diffusion: for n images, x_t and the predicted x0 at
        ``columns`` evenly spaced steps, ending with the sample (one digit per row for
        conditional models unless ``class_label`` fixes one; one prompt per row for a text model
        given ``prompts``)."""
        if self.is_text:
            res = self.sample(len(prompts) if prompts else n, prompts=prompts or None,
                              guidance=guidance if prompts else 1.0, trajectory=True, **sample_options)
            return self._save_trajectory(res, path, columns)
        if class_label is not None:
            labels = class_label
        else:
            labels = list(range(n)) if self.num_classes is not None and n <= self.num_classes else None
        res = self.sample(n, class_labels=labels, guidance=guidance if labels is not None else 1.0,
                          trajectory=True, **sample_options)
        return self._save_trajectory(res, path, columns)

    @staticmethod
    def _save_trajectory(res: SampleResult, path: str | Path, columns: int) -> Path:
        from .viz import save_trajectory

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


def bf16_inference_copy(net: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``net`` with bf16 weights for sampling under bf16 autocast, which then casts no
    weights. LayerNorms stay float32: they read float32 caption embeddings, and CPU layer_norm
    refuses float32 input with bf16 parameters."""
    net = copy.deepcopy(net).to(torch.bfloat16)
    for m in net.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.float()
    return net


class _EagerOnFailure:
    """A compiled denoiser that, if compiling fails at its first call, warns and runs eagerly."""

    def __init__(self, compiled: Denoiser):
        self.compiled, self.checked = compiled, False
        self.process, self.clip_x0 = compiled.process, compiled.clip_x0

    def __call__(self, xt: Tensor, t: Tensor, cond=None):
        if self.checked:
            return self.compiled(xt, t, cond)
        out = call_or_fall_back(lambda: self.compiled(xt, t, cond), self.compiled.net, "sampling")
        self.checked = True
        return out


class _NullCondition:
    """A conditional denoiser asked for its null condition whatever the given one (guidance w = 0):
    the null class, or a text embedding (the empty caption, or a negative prompt)."""

    def __init__(self, denoiser, null):
        self.denoiser, self.null, self.process = denoiser, null, denoiser.process
        self.clip_x0 = getattr(denoiser, "clip_x0", None)

    def __call__(self, xt: Tensor, t: Tensor, cond=None):
        b = xt.shape[0]
        if isinstance(self.null, int):
            return self.denoiser(xt, t, torch.full((b,), self.null, dtype=torch.long, device=xt.device))
        return self.denoiser(xt, t, self.null if len(self.null) == b else self.null.repeat(b))


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
        from .cold.pipeline import load_cold

        return load_cold(run_dir, cfg, ckpt, weights)
    net = build_run_net(cfg, run_dir / "config.json")
    den = cfg["denoiser"]
    with config_errors(run_dir / "config.json", "'process' or 'denoiser'"):
        denoiser = Denoiser(net, from_config(cfg["process"]), den["prediction"],
                            sigma_data=den["sigma_data"], learn_variance=den["learn_variance"],
                            clip_x0=den["clip_x0"])
    load_checked(denoiser, ckpt / f"{weights}.safetensors")
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
