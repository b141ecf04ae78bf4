"""One description of a draw: ``SampleSpec``, frozen, built once by whoever asks for samples (the
CLI, ``undiffuse eval``, the Python API, the web page) and handed down intact to the pipeline.

    spec = SampleSpec(sampler="dpmpp_2m", num_inference_steps=20, guidance=3.0, class_labels=7, seed=1)
    images = pipe.sample(16, spec)                       # or pipe.sample(16, sampler="dpmpp_2m", ...)
    pipe.sample(16, spec.replace(seed=2))                # another draw, everything else the same

Fields left at None take the pipeline's defaults (a Gaussian run: ddim, 50 steps, the sampler's own
spacing; a cold run: Algorithm 2 over every severity). ``options`` carries what only some samplers
take (``eta``, ``s_churn``, a cold run's ``noise_std``), as sorted (key, value) pairs so that the
spec stays hashable; ``spec.sampler_options`` gives them back as a dict.

``steps=`` (the name before this release) is accepted by ``SampleSpec.build`` and ``pipe.sample``
with a FutureWarning: ``steps`` also meant optimiser steps, T and a DDPM's N.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from torch import Tensor

from .checks import check_sample_settings

#: The deprecated keyword names of ``SampleSpec.build`` -> their new names.
DEPRECATED = {"steps": "num_inference_steps"}


def _frozen(value):
    """Lists and 1-D tensors as tuples (a frozen spec holds no mutable value); scalars as they are."""
    if isinstance(value, Tensor):
        return value.item() if value.ndim == 0 else tuple(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


@dataclass(frozen=True)
class SampleSpec:
    """How to draw samples (see the module docstring); ``n`` is the caller's, not part of it."""

    sampler: str | None = None
    num_inference_steps: int | None = None
    spacing: str | None = None
    seed: int = 0
    #: One label for all samples, one per sample, or None (the null class of a conditional model).
    class_labels: int | tuple[int, ...] | None = None
    #: Text runs: one prompt for all samples, one per sample, or None (the empty caption).
    prompts: str | tuple[str, ...] | None = None
    negative_prompt: str | tuple[str, ...] | None = None
    #: Classifier-free guidance w (1: plain conditional, 0: unconditional, > 1: stronger).
    guidance: float = 1.0
    #: Classifier guidance with the run's noisy classifier (Gaussian runs with classes).
    classifier_scale: float = 0.0
    bf16: bool = False
    compile: bool = False
    options: tuple[tuple[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("class_labels", "prompts", "negative_prompt"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        options = self.options.items() if isinstance(self.options, dict) else self.options
        object.__setattr__(self, "options", tuple(sorted((str(k), _frozen(v)) for k, v in options)))
        self.validate()

    def validate(self) -> None:
        """Every number checked, naming the setting (``checks.check_sample_settings``; ``n`` is the
        caller's, checked where it is given)."""
        check_sample_settings(1, num_inference_steps=self.num_inference_steps, guidance=self.guidance,
                              classifier_scale=self.classifier_scale, options=self.sampler_options)

    @property
    def sampler_options(self) -> dict[str, Any]:
        return dict(self.options)

    def replace(self, **changes) -> SampleSpec:
        """A copy with ``changes`` (field names, deprecated names or sampler options)."""
        return SampleSpec.build(self, **changes)

    @classmethod
    def build(cls, spec: SampleSpec | None = None, **settings) -> SampleSpec:
        """``spec`` (default: all defaults) with ``settings`` applied: field names, the deprecated
        ``steps``, and anything else as a sampler option."""
        spec = spec if spec is not None else cls()
        if not isinstance(spec, SampleSpec):
            raise TypeError(f"spec must be a SampleSpec, got {type(spec).__name__}")
        names = {f.name for f in fields(cls)}
        changes, options = {}, spec.sampler_options
        for key, value in settings.items():
            if key in DEPRECATED:
                warnings.warn(f"{key}= is deprecated; use {DEPRECATED[key]}= (it will be removed in the next "
                              "release)", FutureWarning, stacklevel=3)
                key = DEPRECATED[key]
            if key == "options":
                options |= dict(value)
            elif key in names:
                changes[key] = value
            else:
                options[key] = value
        return replace(spec, **changes, options=tuple(options.items()))

    def to_dict(self) -> dict:
        """JSON-ready (``eval.json``, the web page)."""
        d = asdict(self)
        d["options"] = dict(self.options)
        return d
