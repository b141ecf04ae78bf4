"""Fade ("animorphosis"): blend toward an image of another dataset (Bansal et al. 2022,
"animorphosis", sec. 5 and Fig. 1: AFHQ animals fade into CelebA faces, T = 200 in the official
README).

    D(x0, t) = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) z,

``z`` an image drawn per sample (from the generator) from a *source* pool, and ``alpha_bar`` the
cosine schedule of Nichol & Dhariwal 2021 (eq. 17, s = 0.008) at t / T, as the paper's code uses:
this is DDPM's forward process with the Gaussian noise replaced by a picture. At t = T
``alpha_bar`` is ~2e-9, so ``D(x0, T)`` is z up to 5e-5 x0.

Sources (loaded once and cached, adapted to the images' size and channels on use):

* ``"digits"``: scikit-learn's 1797 8 x 8 digits (always available);
* ``"mnist"``: undiffuse's 5000 MNIST digits (32 x 32);
* ``"photos"``: crops of scikit-learn's two sample photographs (``china.jpg``, ``flower.jpg``),
  twelve 200 x 200 tiles (always available with scikit-learn);
* ``"skimage"``: scikit-image's sample photographs (``skimage.data``; needs scikit-image installed);
* or a tensor of images (N, C, H, W) in [-1, 1] passed as ``pool=``; its config records
  ``source="custom"`` and cannot be rebuilt from JSON without passing the pool again.

Pool images are resized to the target size (antialiased bilinear) and converted to the target
channel count (same count: kept; otherwise through gray, ITU-R 601 luma for RGB, repeated
over the target channels). The state is ``{"z"}``: the drawn images.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ...processes.schedules import alpha_bar_fn
from .base import Degradation, State, bcast

SOURCES = ("digits", "mnist", "photos", "skimage")
SKIMAGE_PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "cat", "rocket", "coins", "moon",
                  "brick", "grass", "gravel", "hubble_deep_field")


def _tiles(image: np.ndarray, tile: int) -> list[np.ndarray]:
    h, w = image.shape[:2]
    return [image[i:i + tile, j:j + tile] for i in range(0, h - tile + 1, tile)
            for j in range(0, w - tile + 1, tile)]


def _to_tensor(images: list[np.ndarray], size: int) -> Tensor:
    """uint8 (H, W) or (H, W, 3) arrays -> (N, C, size, size) in [-1, 1]."""
    out = []
    for im in images:
        x = torch.from_numpy(np.ascontiguousarray(im)).float() / 127.5 - 1.0
        x = x[None] if x.ndim == 2 else x.permute(2, 0, 1)
        if x.shape[0] == 4:
            x = x[:3]
        out.append(F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,
                                 align_corners=False)[0].clamp(-1, 1))
    channels = max(x.shape[0] for x in out)
    return torch.stack([x.expand(channels, -1, -1) for x in out])


@lru_cache(maxsize=None)
def load_source(source: str) -> Tensor:
    """The pool of a named source, (N, C, H, W) float32 in [-1, 1], cached."""
    if source == "digits":
        from ...data import load_digits
        return load_digits().x
    if source == "mnist":
        from ...data import load_mnist
        return load_mnist().x
    if source == "photos":
        from sklearn.datasets import load_sample_images
        tiles = [t for im in load_sample_images().images for t in _tiles(im, 200)]
        return _to_tensor(tiles, 64)
    if source == "skimage":
        try:
            import skimage.data
        except ImportError:
            raise ImportError("fade source 'skimage' needs scikit-image (pip install scikit-image); "
                              "'photos' uses scikit-learn's sample photographs instead") from None
        images = []
        for name in SKIMAGE_PHOTOS:
            fn = getattr(skimage.data, name, None)
            if fn is None:
                continue
            try:
                im = np.asarray(fn())
            except Exception:  # some images are fetched on demand and may be unavailable offline
                continue
            if im.dtype != np.uint8:  # e.g. boolean or float images: stretch to 0..255
                f = im.astype(np.float64)
                im = (255 * (f - f.min()) / max(float(f.max() - f.min()), 1e-12)).astype(np.uint8)
            side = min(im.shape[:2])
            images.append(im[:side, :side])
        if not images:
            raise RuntimeError("no scikit-image sample photograph could be loaded")
        return _to_tensor(images, 128)
    raise ValueError(f"unknown fade source {source!r}; choose one of {SOURCES} or pass pool=")


def adapt(images: Tensor, channels: int, height: int, width: int) -> Tensor:
    """Resize pool images to (height, width) and convert them to ``channels`` channels (through
    gray when the counts differ)."""
    x = images
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    c = x.shape[1]
    if c == channels:
        return x
    if c == 3:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        gray = (x * w).sum(1, keepdim=True)
    else:
        gray = x.mean(1, keepdim=True)
    return gray.expand(-1, channels, -1, -1)


class Fade(Degradation):
    """Blend toward another dataset's images (see the module docstring).

    Args:
        num_steps: T (paper, AFHQ -> CelebA: 200).
        source: "digits", "mnist", "photos" or "skimage" (or "custom" with ``pool``).
        schedule: alpha_bar schedule at t / T, one of undiffuse's ("cosine", the paper's code).
        seed: seed of the images drawn when no generator is given.
        pool: a tensor of source images (N, C, H, W) in [-1, 1], instead of a named source.
    """

    name = "fade"

    def __init__(self, num_steps: int = 200, source: str = "photos", schedule: str = "cosine",
                 seed: int = 0, pool: Tensor | None = None):
        super().__init__(num_steps, seed)
        if pool is None and source not in SOURCES:
            raise ValueError(f"fade: unknown source {source!r}; choose one of {SOURCES} or pass pool=")
        self.source = "custom" if pool is not None else source
        self.schedule = schedule
        self._alpha_bar = alpha_bar_fn(schedule)
        self._pool = pool

    def settings(self) -> dict:
        return {"num_steps": self.num_steps, "source": self.source, "schedule": self.schedule,
                "seed": self.seed}

    @classmethod
    def from_config(cls, cfg: dict, pool: Tensor | None = None) -> Fade:
        cfg = dict(cfg)
        cfg.pop("type", None)
        if cfg.get("source") == "custom":
            if pool is None:
                raise ValueError("fade: this config used a custom image pool; pass it as pool=")
            cfg.pop("source")
            return cls(**cfg, pool=pool)
        return cls(**cfg)

    @property
    def random(self) -> bool:
        return True

    @property
    def pool(self) -> Tensor:
        return self._pool if self._pool is not None else load_source(self.source)

    def alpha_bar(self, t: Tensor) -> Tensor:
        """alpha_bar at severities t (float64)."""
        return self._alpha_bar(torch.as_tensor(t, dtype=torch.float64) / self.num_steps)

    def draw_state(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, Tensor]:
        b, c, h, w = shape
        pool = self.pool
        idx = torch.randint(len(pool), (b,), generator=generator, device=generator.device).cpu()
        return {"z": adapt(pool[idx].float(), c, h, w).to(generator.device)}

    def apply(self, x0: Tensor, t: Tensor, state: State) -> Tensor:
        z = state["z"].to(x0)
        if z.shape != x0.shape:
            raise ValueError(f"fade: the state's images have shape {tuple(z.shape)}, "
                             f"the batch {tuple(x0.shape)}")
        ab = self.alpha_bar(t.cpu()).to(x0.device)
        return bcast(ab.sqrt().to(x0.dtype), x0) * x0 + bcast((1 - ab).sqrt().to(x0.dtype), x0) * z

    def prior(self, shape, generator=None, device="cpu", dtype=torch.float32):
        """Fully faded images: sqrt(1 - alpha_bar_T) z for drawn z, with their state."""
        state = self.sample_state(shape, generator, device, dtype)
        scale = float(math.sqrt(1 - float(self.alpha_bar(torch.tensor(self.num_steps)))))
        return scale * state["z"], state
