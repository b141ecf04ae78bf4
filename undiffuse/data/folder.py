"""Load a folder of image files (searched recursively) into a square-image TensorData."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .base import DataError, TensorData, check_channels, check_image_size, uint8_to_unit
from .folder_captions import apply_caption_policy, read_captions

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_IMAGE_SIZE = 64
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Below this many files a progress bar is more noise than help.
PROGRESS_MIN_FILES = 500
# Everything PIL raises for files that are not images, are truncated or are otherwise broken.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
ON_BAD_IMAGE_CHOICES = ("error", "skip")


def load_folder(root: str | Path, *, image_size: int | None = None, channels: int | None = None,
                n: int | None = None, seed: int = 0, on_bad_image: str = "error",
                labels_from_subfolders: bool = False, allow_upscale: bool = False, captions: bool = False,
                on_missing_caption: str = "error", caption_column: str = "text") -> TensorData:
    """Load every PNG/JPEG/BMP/WEBP image under ``root`` (case-insensitive; hidden files and folders ignored).

    Each image is scaled so its short side is ``image_size`` (default 64; bicubic, EXIF rotation applied,
    transparency flattened onto white) and centre-cropped to a square. ``channels`` 1 or 3 converts every
    image to greyscale or RGB; by default it is 3 if any image has a colour mode, else 1. ``n`` loads a
    seeded random subset of that many files. Unreadable files raise a DataError, or with
    ``on_bad_image="skip"`` are left out with a warning. Images smaller than ``image_size`` raise unless
    ``allow_upscale``. With ``labels_from_subfolders`` the label is the first-level sub-folder; class
    names are sorted.

    With ``captions`` every image gets a caption from ``metadata.jsonl`` (column ``caption_column``) or
    from a ``.txt`` file beside it; ``on_missing_caption`` is "error", "warn" (keep with the empty
    caption) or "skip" (see ``folder_captions``).
    """
    size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
    check_image_size(size)
    check_channels(channels)
    if on_bad_image not in ON_BAD_IMAGE_CHOICES:
        raise DataError(f"on_bad_image must be one of {ON_BAD_IMAGE_CHOICES}, got {on_bad_image!r}")
    root = _check_root(root)
    files = find_images(root)
    if labels_from_subfolders:
        _check_in_subfolders(root, files)
    caption_of = read_captions(root, files, caption_column) if captions else None
    if n is not None:
        files = _subsample(files, n, seed)
    if caption_of is not None:
        files, caption_of = apply_caption_policy(root, files, caption_of, on_missing_caption)
    arrays, greys, kept = _read_all(root, files, size, channels, on_bad_image, allow_upscale)
    texts = None if caption_of is None else [caption_of[path] for path in kept]
    if channels is None:
        channels = 1 if all(greys) else 3
    x = uint8_to_unit(np.stack([_as_channels(a, channels) for a in arrays]))
    name = f"folder:{root}"
    if not labels_from_subfolders:
        return TensorData(x, None, None, name, captions=texts)
    class_of = [path.relative_to(root).parts[0] for path in kept]
    class_names = sorted(set(class_of))
    labels = torch.tensor([class_names.index(c) for c in class_of], dtype=torch.long)
    return TensorData(x, labels, len(class_names), name, class_names, texts)


def find_images(root: Path) -> list[Path]:
    """All image files under ``root`` in sorted order, skipping hidden files and folders.

    Hidden entries are skipped because they are usually tool debris (``.ipynb_checkpoints``, macOS
    ``._photo.jpg`` resource forks) that would otherwise fail to decode.
    """
    found = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(folder, f) for f in sorted(names)
                  if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise DataError(f"no images found under {root}: looked recursively for {', '.join(IMAGE_EXTENSIONS)} "
                        "files (any letter case; hidden files and folders are ignored); point at the folder "
                        "that holds your images")
    return found


def _check_root(root: str | Path) -> Path:
    """The absolute image folder, or a DataError saying what is wrong with it."""
    path = Path(root).expanduser().resolve()
    if not path.exists():
        raise DataError(f"image folder {path} does not exist; check the path, or use one of the built-in "
                        "datasets (mnist, digits, toy2d)")
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a folder; pass the folder that contains the images")
    return path


def _check_in_subfolders(root: Path, files: list[Path]) -> None:
    """Labels come from first-level sub-folders, so no image may sit directly in the root."""
    loose = [f.name for f in files if f.parent == root]
    if loose:
        raise DataError(f"labels_from_subfolders needs every image inside a class sub-folder of {root}, but "
                        f"{len(loose)} sit directly in it: {_first_few(loose)}; move them into a sub-folder "
                        "named after their class, or load without labels")


def _subsample(files: list[Path], n: int, seed: int) -> list[Path]:
    """A seeded random subset of ``n`` files, kept in sorted order (all of them if there are fewer)."""
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    if n >= len(files):
        return files
    chosen = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
    return [files[i] for i in sorted(chosen)]


def _read_all(root: Path, files: list[Path], size: int, channels: int | None, on_bad_image: str,
              allow_upscale: bool) -> tuple[list[np.ndarray], list[bool], list[Path]]:
    """Decode every file; returns the pixel arrays, whether each was greyscale, and the files kept."""
    from tqdm.auto import tqdm

    arrays, greys, kept, bad = [], [], [], []
    for path in tqdm(files, desc=f"loading {root.name}", unit="img", disable=len(files) <= PROGRESS_MIN_FILES):
        try:
            pixels, grey = _read(path, size, channels, allow_upscale)
        except DataError:
            raise
        except DECODE_ERRORS as err:
            if on_bad_image == "error":
                raise DataError(f"cannot read image {path} ({err}); fix or delete it, or pass "
                                "--on-bad-image skip (on_bad_image='skip' in Python) to leave unreadable files out") from err
            bad.append(str(path.relative_to(root)))
            continue
        arrays.append(pixels)
        greys.append(grey)
        kept.append(path)
    if bad and not kept:
        raise DataError(f"all {len(bad)} images under {root} were unreadable, e.g. {_first_few(bad)}; "
                        "check that these are real image files")
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable image(s) under {root}: {_first_few(bad)}", stacklevel=4)
    return arrays, greys, kept


def _read(path: Path, size: int, channels: int | None, allow_upscale: bool) -> tuple[np.ndarray, bool]:
    """One image as (size, size, C) uint8 with C 1 or 3, and whether its source was greyscale."""
    with Image.open(path) as img:
        width, height = img.size
        if min(width, height) < size and not allow_upscale:
            raise DataError(f"{path} is {width}x{height} pixels, smaller than the requested image size {size} "
                            f"on its short side; use a smaller image size (--image-size {min(width, height)} "
                            "or less), remove the image, or pass allow_upscale=True")
        # JPEGs can decode at 1/2, 1/4 or 1/8 scale (never below the requested size): much faster for photos.
        img.draft(None, (size, size))
        img = ImageOps.exif_transpose(img)
        grey = img.mode in GREY_MODES
        mode = {1: "L", 3: "RGB", None: "L" if grey else "RGB"}[channels]
        img = ImageOps.fit(_flatten(img, mode), (size, size), method=Image.BICUBIC)
        pixels = np.asarray(img, dtype=np.uint8)
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels), grey


def _flatten(img: Image.Image, mode: str) -> Image.Image:
    """Convert to ``mode`` ("L" or "RGB"), compositing transparency onto white and rescaling 16-bit grey."""
    if img.mode == "I" or img.mode.startswith("I;16"):
        # 16-bit PNGs open as I;16 (or I in older Pillow); PIL's conversion to L clips at 255 instead of
        # scaling, which would turn most pixels white.
        img = Image.fromarray((np.asarray(img).astype(np.int64) >> 8).clip(0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return img.convert(mode)


def _as_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    """Repeat a greyscale (H, W, 1) array to RGB when the dataset as a whole is colour."""
    return np.repeat(pixels, 3, axis=2) if pixels.shape[2] != channels else pixels


def _first_few(names: list[str], k: int = 5) -> str:
    """The first ``k`` names, comma-separated, with a count of the rest."""
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return ", ".join(names[:k]) + more
