"""Datasets as in-memory tensors: built-in digits, 2-D toys and folders of images.

``load_dataset(spec)`` is the one entry point; every failure is a :class:`DataError` whose message names
the file or folder involved and what to do about it.
"""
from __future__ import annotations

import difflib
import os

from .base import DataError, TensorData
from .builtin import load_digits, load_mnist, load_photos
from .folder import IMAGE_EXTENSIONS, find_images, load_folder
from .mnist_captions import DigitPrompt, measure_strokes, mnist_prompts, stroke_classes
from .shapes import ShapeObject, ShapePrompt, load_shapes, shapes_prompts
from .toy2d import DEFAULT_VARIANT, VARIANTS as TOY2D_VARIANTS, load_toy2d

__all__ = ["DataError", "TensorData", "load_dataset", "load_mnist", "load_digits", "load_photos", "load_toy2d",
           "load_folder", "find_images", "IMAGE_EXTENSIONS", "TOY2D_VARIANTS", "DATASET_NAMES", "load_shapes", "shapes_prompts",
           "ShapePrompt", "ShapeObject", "mnist_prompts", "DigitPrompt", "measure_strokes", "stroke_classes"]

_BUILTIN = {"mnist": load_mnist, "digits": load_digits, "photos": load_photos, "shapes": load_shapes}
DATASET_NAMES = ["mnist", "digits", "toy2d"] + [f"toy2d:{v}" for v in TOY2D_VARIANTS] + ["photos", "shapes"]
DEFAULT_TOY2D_POINTS = 10000


def load_dataset(spec: str, *, image_size: int | None = None, channels: int | None = None, n: int | None = None,
                 seed: int = 0, on_bad_image: str = "error", labels_from_subfolders: bool = False,
                 allow_upscale: bool = False, captions: bool = False, on_missing_caption: str = "error",
                 caption_column: str = "text") -> TensorData:
    """Load a dataset by name or path.

    ``spec`` is ``mnist`` (captioned), ``digits``, ``photos`` (colour patches of scikit-learn's sample
    photographs), ``shapes`` (10,000 captioned 32x32 coloured shapes, generated; see ``load_shapes``),
    ``toy2d`` (the swiss roll) or ``toy2d:VARIANT`` with VARIANT one of
    swissroll, 8gaussians, moons, checkerboard; or an image folder given as a path or ``folder:PATH``.
    ``n`` is the number of toy points (default 10000) and otherwise a cap: a seeded random subset,
    stratified by class for the built-in digits. ``image_size`` and ``channels`` apply to image datasets
    only; ``on_bad_image``, ``labels_from_subfolders``, ``allow_upscale`` and the caption options
    ``captions``, ``on_missing_caption``, ``caption_column`` to folders only (the built-in image datasets
    are always labelled; mnist and shapes are always captioned). See the loaders for the details of each source.
    """
    name = spec.strip()
    if name.lower() in _BUILTIN:
        data = _BUILTIN[name.lower()](image_size=image_size, channels=channels)
        return data if n is None else data.subsample(n, seed)
    if name.lower() == "toy2d" or name.lower().startswith("toy2d:"):
        return _load_toy(name, image_size, channels, n, seed)
    if name.startswith("folder:") or _looks_like_path(name):
        return load_folder(name.removeprefix("folder:"), image_size=image_size, channels=channels, n=n, seed=seed,
                           on_bad_image=on_bad_image, labels_from_subfolders=labels_from_subfolders,
                           allow_upscale=allow_upscale, captions=captions, on_missing_caption=on_missing_caption,
                           caption_column=caption_column)
    raise DataError(_unknown_message(name))


def _load_toy(spec: str, image_size: int | None, channels: int | None, n: int | None, seed: int) -> TensorData:
    """Toy 2-D points; image options make no sense for them, so they are refused rather than ignored."""
    if image_size is not None or channels is not None:
        raise DataError(f"{spec} is a set of 2-D points, not images; drop image_size/channels "
                        "(--image-size/--channels) for it")
    variant = spec.partition(":")[2].strip().lower() or DEFAULT_VARIANT
    return load_toy2d(variant, DEFAULT_TOY2D_POINTS if n is None else n, seed)


def _looks_like_path(spec: str) -> bool:
    """An existing path, or anything written like one (so a mistyped folder gets a 'missing folder' error)."""
    return os.path.exists(os.path.expanduser(spec)) or spec.startswith((".", "~")) or "/" in spec or os.sep in spec


def _unknown_message(spec: str) -> str:
    """Name the valid choices, and the closest one when the spec looks like a typo."""
    close = difflib.get_close_matches(spec.lower(), DATASET_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (f"unknown dataset {spec!r}{hint}; choose one of {', '.join(DATASET_NAMES)}, or give the path of a "
            "folder of images (or 'folder:PATH')")
