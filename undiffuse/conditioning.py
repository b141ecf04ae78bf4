"""What a model is conditioned on, and how sampling steers it: one class per kind of condition.

* ``Unconditional``: no condition;
* ``ClassLabels``: class indices 0..K-1, with K the null class that label dropout trained for
  classifier-free guidance (Ho & Salimans 2022); classifier guidance (Dhariwal & Nichol 2021) with
  the run's noisy classifier (``RUN/classifier``, loaded on first use);
* ``TextPrompts``: captions through the run's frozen text encoder (loaded by name on first use), the
  empty caption as the null condition and negative prompts in its place (``undiffuse.text``).

A pipeline holds one. ``condition(spec, n, device)`` turns a ``SampleSpec``'s labels or prompts into
the network's condition, refusing what the model cannot take; ``guided(model, spec, cond)`` wraps
the model in the guidance the spec asks for (``undiffuse.guidance``: the wrappers work for Gaussian
denoisers and cold restorers alike). ``takes_labels`` / ``takes_prompts`` are what callers (the
CLI, the web page) ask instead of probing attributes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .guidance import ClassifierFreeGuidance, ClassifierGuidance, NullCondition
from .sampling import SampleSpec

NO_LABELS = "this model is unconditional: it takes no class labels"
NO_PROMPTS = "this model is not text-conditional: it takes no prompts (train one with --text)"


class Conditioning:
    """No condition (the base of the others): refuses labels, prompts and guidance."""

    takes_labels = False
    takes_prompts = False
    num_classes: int | None = None

    def condition(self, spec: SampleSpec, n: int, device: torch.device | str = "cpu"):
        self._no_prompts(spec)
        if spec.class_labels is not None:
            raise ValueError(NO_LABELS)
        return None

    def guided(self, model, spec: SampleSpec, cond):
        self._no_guidance(spec)
        return model

    def _no_prompts(self, spec: SampleSpec) -> None:
        if spec.prompts is not None or spec.negative_prompt is not None:
            raise ValueError(NO_PROMPTS)

    def _no_guidance(self, spec: SampleSpec) -> None:
        if spec.guidance != 1.0 or spec.classifier_scale:
            raise ValueError("guidance needs a class-conditional model and class labels")


Unconditional = Conditioning


class ClassLabels(Conditioning):
    """Class labels 0..num_classes-1; ``num_classes`` itself is the null class."""

    takes_labels = True

    def __init__(self, num_classes: int, run_dir: str | Path | None = None):
        self.num_classes, self.run_dir = int(num_classes), run_dir
        self._classifier = None

    def labels(self, labels, n: int) -> Tensor:
        """Validated (n,) labels; None means the null class."""
        k = self.num_classes
        if labels is None:
            return torch.full((n,), k)
        labels = torch.as_tensor(labels, dtype=torch.long)
        labels = labels.expand(n) if labels.ndim == 0 else labels
        if len(labels) != n or bool((labels < 0).any()) or bool((labels > k).any()):
            raise ValueError(f"class labels must be {n} values in 0..{k - 1} (or {k} for unconditional), "
                             f"got {labels.tolist()}")
        return labels

    def condition(self, spec: SampleSpec, n: int, device: torch.device | str = "cpu") -> Tensor:
        self._no_prompts(spec)
        return self.labels(spec.class_labels, n).to(device)

    def guided(self, model, spec: SampleSpec, cond: Tensor):
        if spec.guidance == 0.0:
            model = NullCondition(model, self.num_classes)
        elif spec.guidance != 1.0:
            model = ClassifierFreeGuidance(model, spec.guidance, null_cond=self.num_classes)
        if spec.classifier_scale:
            model = ClassifierGuidance(model, self.classifier(model.process), spec.classifier_scale, pass_cond=True)
        return model

    def classifier(self, process):
        """The run's noise-conditional classifier (``RUN/classifier``), loaded once."""
        if self._classifier is None:
            from .classifier import load_classifier

            path = None if self.run_dir is None else Path(self.run_dir) / "classifier"
            if path is None or not path.is_dir():
                raise FileNotFoundError(f"classifier guidance needs a classifier in {path}; train one "
                                        "with `undiffuse train-classifier --run RUN`")
            self._classifier = load_classifier(path, process)
        return self._classifier


class TextPrompts(Conditioning):
    """Captions through a frozen text encoder. ``text`` = {"encoder", "max_length", "dim"} as the
    run's config.json records it; ``encoder``: that encoder already built (else loaded on first use)."""

    takes_prompts = True

    def __init__(self, text: dict, encoder=None):
        self.text, self._encoder = dict(text), encoder

    @property
    def encoder(self):
        if self._encoder is None:
            from .text import get_encoder

            name, length = self.text["encoder"], self.text["max_length"]
            with torch.random.fork_rng(devices=[]):  # loading must not move the global RNG
                encoder = get_encoder(name)
                if encoder.max_length != length:
                    encoder = get_encoder(name, max_length=length)
            if encoder.dim != self.text["dim"]:
                raise ValueError(f"text encoder {encoder.name!r} gives {encoder.dim}-d embeddings, but this model "
                                 f"was trained on {self.text['dim']}-d ones; register the encoder it was trained with")
            self._encoder = encoder
        return self._encoder

    def embed(self, prompts: str | tuple[str, ...] | list[str] | None, n: int, device="cpu", what: str = "prompts"):
        """The embedding of ``n`` prompts: one (repeated), a list of n, or None (the empty caption)."""
        from .text import NULL_CAPTION, encode_captions

        if prompts is None:
            prompts = NULL_CAPTION
        if isinstance(prompts, str):
            return encode_captions(self.encoder, [prompts]).repeat(n).to(device)
        prompts = list(prompts)
        if len(prompts) != n or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"{what} must be one string (used for every sample) or a list of {n} strings, one "
                             f"per sample; got {len(prompts)} items")
        return encode_captions(self.encoder, prompts).to(device)  # the encoder runs on the CPU

    def condition(self, spec: SampleSpec, n: int, device: torch.device | str = "cpu"):
        if spec.class_labels is not None:
            raise ValueError("this model is text-conditional: it takes prompts, not class labels")
        return self.embed(spec.prompts, n, device)

    def guided(self, model, spec: SampleSpec, cond):
        """Classifier-free guidance w; the unconditional pass sees the empty caption or the negative prompt."""
        if spec.classifier_scale:
            raise ValueError("classifier guidance needs class labels; a text model is guided by its prompts "
                             "(--guidance)")
        if spec.guidance == 1.0:
            if spec.negative_prompt is not None:
                raise ValueError("a negative prompt acts through classifier-free guidance and has no effect at "
                                 "guidance 1; use --guidance > 1 (e.g. 3) or drop the negative prompt")
            return model
        if spec.prompts is None:
            raise ValueError("classifier-free guidance needs prompts (without them the samples are unconditional)")
        null = self.embed(spec.negative_prompt, len(cond), cond.tokens.device, what="negative prompts")
        if spec.guidance == 0.0:
            return NullCondition(model, null)
        return ClassifierFreeGuidance(model, spec.guidance, null_cond=null)


def conditioning_for(num_classes: int | None, text: dict | None = None, *, encoder=None,
                     run_dir: str | Path | None = None) -> Conditioning:
    """The conditioning of a run (its config.json's data.num_classes and text entries)."""
    if text is not None:
        return TextPrompts(text, encoder)
    if num_classes is not None:
        return ClassLabels(num_classes, run_dir)
    return Unconditional()


# --- training: the condition of each batch, with the dropout that classifier-free guidance needs ---


def dropout_mask(gen: torch.Generator, b: int, p: float) -> Tensor:
    """Which of ``b`` conditions to replace by the null one: each with probability ``p``, drawn from
    ``gen`` as one ``rand(b)``, the same draw for labels and captions, so that both kinds of run
    advance the generator alike."""
    return torch.rand(b, generator=gen) < p


class NoDropout:
    """An unconditional run draws nothing and conditions on nothing."""

    def draw(self, idx: Tensor, gen: torch.Generator):
        return None

    def share(self, drawn, idx: Tensor, mine, device) -> None:
        return None


class LabelDropout(NoDropout):
    """Class labels, each replaced by the null class with probability ``p`` (Ho & Salimans 2022), so
    that one model serves classifier-free guidance."""

    def __init__(self, labels: Tensor, num_classes: int, p: float):
        self.labels, self.num_classes, self.p = labels, num_classes, p

    def draw(self, idx: Tensor, gen: torch.Generator) -> Tensor:
        labels = self.labels[idx].clone()
        labels[dropout_mask(gen, len(idx), self.p)] = self.num_classes
        return labels

    def share(self, drawn: Tensor, idx: Tensor, mine, device) -> Tensor:
        return drawn[mine].to(device)


class CaptionDropout(NoDropout):
    """Captions, each replaced by the empty one with probability ``p`` (GLIDE, Nichol et al. 2022,
    sec. 2.3), embedded by the run's ``CaptionEmbedder`` (``undiffuse.text.objective``)."""

    def __init__(self, embedder, p: float):
        self.embedder, self.p = embedder, p

    def draw(self, idx: Tensor, gen: torch.Generator) -> Tensor:
        return dropout_mask(gen, len(idx), self.p)

    def share(self, drawn: Tensor, idx: Tensor, mine, device):
        return self.embedder.embed(idx[mine], drawn[mine]).to(device)


def training_condition(num_classes: int | None, labels: Tensor | None, label_dropout: float,
                       embedder=None, caption_dropout: float = 0.0) -> NoDropout:
    """What a run's batches are conditioned on: captions, class labels, or nothing."""
    if embedder is not None:
        return CaptionDropout(embedder, caption_dropout)
    if num_classes is not None:
        return LabelDropout(labels, num_classes, label_dropout)
    return NoDropout()
