"""The in-memory dataset type shared by every loader, its error type, and small image helpers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class DataError(ValueError):
    """A dataset could not be loaded; the message names the culprit and what to do about it."""


@dataclass
class TensorData:
    """A whole dataset held as tensors.

    ``x`` is float32: images are (N, C, H, W) in [-1, 1]; toy points are (N, 2) at roughly unit scale.
    ``labels`` is (N,) long or None; ``num_classes`` is None exactly when ``labels`` is.
    ``captions`` (one string per item) and ``attributes`` (name -> integer tensor whose first dimension
    is N, e.g. the measured stroke thickness of each digit) are optional; every subset carries them.
    """

    x: Tensor
    labels: Tensor | None
    num_classes: int | None
    name: str
    class_names: list[str] | None = None
    captions: list[str] | None = None
    attributes: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.labels is not None and self.labels.shape != (len(self.x),):
            raise DataError(f"{self.name}: labels have shape {tuple(self.labels.shape)}, expected ({len(self.x)},)")
        if (self.labels is None) != (self.num_classes is None):
            raise DataError(f"{self.name}: labels and num_classes must be given together")
        if self.captions is not None and len(self.captions) != len(self.x):
            raise DataError(f"{self.name}: {len(self.captions)} captions for {len(self.x)} items; give one per item")
        for key, value in (self.attributes or {}).items():
            if value.shape[:1] != (len(self.x),):
                raise DataError(f"{self.name}: attribute {key!r} has shape {tuple(value.shape)}, expected "
                                f"({len(self.x)}, ...)")

    def __len__(self) -> int:
        return len(self.x)

    def select(self, index: Tensor) -> TensorData:
        """The items at ``index`` (a 1-D long tensor), in that order."""
        labels = None if self.labels is None else self.labels[index]
        captions = None if self.captions is None else [self.captions[i] for i in index.tolist()]
        attributes = None if self.attributes is None else {k: v[index] for k, v in self.attributes.items()}
        return TensorData(self.x[index], labels, self.num_classes, self.name, self.class_names, captions, attributes)

    def split(self, fraction: float, seed: int) -> tuple[TensorData, TensorData]:
        """Split into disjoint ``(rest, held_out)`` with ``round(fraction * N)`` items held out.

        With labels the split is stratified: each class contributes its share, rounded so the total is exact.
        Both parts come back in a seeded random order, so a prefix of either is an unbiased sample even when
        the source is sorted by class (MNIST's is).
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"{self.name}: split fraction must be strictly between 0 and 1, got {fraction}")
        n_held = round(fraction * len(self))
        if not 0 < n_held < len(self):
            raise DataError(f"{self.name}: splitting {len(self)} items with fraction {fraction} leaves a part empty")
        gen = torch.Generator().manual_seed(seed)
        groups = self._groups(gen)
        quotas = _largest_remainder([len(g) * fraction for g in groups], n_held)
        held = torch.cat([g[:q] for g, q in zip(groups, quotas)])
        rest = torch.cat([g[q:] for g, q in zip(groups, quotas)])
        # Reshuffle because concatenating per-class groups would leave each part sorted by class again.
        held = held[torch.randperm(len(held), generator=gen)]
        rest = rest[torch.randperm(len(rest), generator=gen)]
        return self.select(rest), self.select(held)

    def subsample(self, n: int, seed: int) -> TensorData:
        """A seeded (stratified, if labelled) random subset of ``n`` items; everything if ``n >= len(self)``."""
        if n < 1:
            raise DataError(f"{self.name}: n must be at least 1, got {n}")
        if n >= len(self):
            return self
        return self.split(n / len(self), seed)[1]

    def _groups(self, gen: torch.Generator) -> list[Tensor]:
        """Shuffled index groups, one per class (or a single group when unlabelled)."""
        perm = torch.randperm(len(self), generator=gen)
        if self.labels is None:
            return [perm]
        shuffled_labels = self.labels[perm]
        return [perm[shuffled_labels == c] for c in torch.unique(self.labels)]


def _largest_remainder(shares: list[float], total: int) -> list[int]:
    """Round ``shares`` to integers summing to ``total``, giving leftovers to the largest fractional parts."""
    floors = [int(s) for s in shares]
    order = sorted(range(len(shares)), key=lambda i: shares[i] - floors[i], reverse=True)
    for i in order[: total - sum(floors)]:
        floors[i] += 1
    return floors


def check_channels(channels: int | None) -> None:
    """Reject channel counts other than 1 (greyscale) and 3 (RGB)."""
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")


def check_image_size(image_size: int | None) -> None:
    """Reject non-positive image sizes early, before any loading work."""
    if image_size is not None and image_size < 1:
        raise DataError(f"image_size must be a positive number of pixels, got {image_size}")


def resize_images(x: Tensor, size: int) -> Tensor:
    """Resize square (N, C, H, W) images in [-1, 1] to ``size`` with antialiased bilinear filtering."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    # Bilinear weights are non-negative, but float rounding can still step a hair outside the range.
    return out.clamp_(-1.0, 1.0)


def square_image(img) -> Tensor:
    """A PIL image as a (1, C, H, H) tensor in [-1, 1]: greyscale stays one channel, anything else
    becomes RGB, and the centre square is kept (``undiffuse degrade``, the web page's uploads)."""
    img = img.convert("L" if img.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
    side = min(img.size)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    pixels = np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.float32)
    x = torch.from_numpy(pixels) / 127.5 - 1.0
    return (x[None] if x.ndim == 2 else x.permute(2, 0, 1))[None]


def set_channels(x: Tensor, channels: int | None) -> Tensor:
    """Convert (N, C, H, W) images between greyscale and RGB; ``None`` keeps them as they are."""
    check_channels(channels)
    if channels is None or channels == x.shape[1]:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    # ITU-R 601 luma, the weights PIL uses for RGB -> L, so folder and tensor conversions agree.
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def uint8_to_unit(images: np.ndarray) -> Tensor:
    """(N, H, W, C) uint8 pixels -> (N, C, H, W) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0).contiguous()
