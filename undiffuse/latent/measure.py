"""What an autoencoder is measured by: its latents' scale, and how well it reconstructs images.

* ``latent_scale``: 1 / std of the latents over training images, the number that brings them to unit
  variance for diffusion (Rombach et al. 2022, sec. 4.3.2 and app. D.1; Stable Diffusion's 0.18215).
  Measured on the posterior means, which are what latent runs train on (``diffusion.py``).
* ``reconstruction_metrics``: PSNR, SSIM and, given a feature net, the FID-style Frechet distance
  between the originals' and the reconstructions' features, on held-out images.
* ``save_reconstructions``: originals above their reconstructions, one grid.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..metrics import extract_features, fid_from_features, ssim
from .autoencoder import AutoencoderKL

#: Images the scale is measured on (SD measured one batch; a seeded thousand is steadier and quick).
SCALE_IMAGES = 1024


def _batched(fn, x: Tensor, batch_size: int) -> Tensor:
    with torch.inference_mode():
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]).clone()


def encode_means(ae: AutoencoderKL, x: Tensor, batch_size: int = 64) -> Tensor:
    """The posterior means of images ``x`` (on the autoencoder's device), on the CPU."""
    device = next(ae.parameters()).device
    return _batched(lambda b: ae.encode(b.to(device)).mean.cpu(), x, batch_size)


def reconstruct(ae: AutoencoderKL, x: Tensor, batch_size: int = 64) -> Tensor:
    """decode(mean(encode(x))), clamped to the data range [-1, 1]."""
    device = next(ae.parameters()).device
    return _batched(lambda b: ae.decode(ae.encode(b.to(device)).mean).clamp(-1, 1).cpu(), x, batch_size)


def latent_scale(ae: AutoencoderKL, x: Tensor, seed: int = 0, n: int = SCALE_IMAGES) -> float:
    """1 / std of the posterior means of (a seeded subset of at most ``n`` of) the images ``x``."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    std = encode_means(ae, x[idx]).double().std().item()
    if not math.isfinite(std) or std <= 0:
        raise ValueError(f"the autoencoder's latents have std {std} over {len(idx)} images: it encodes everything "
                         "alike (collapsed); train it longer or with a lower --kl-weight")
    return 1.0 / std


def reconstruction_metrics(ae: AutoencoderKL, x: Tensor, feature_net=None) -> dict[str, float]:
    """PSNR (dB, peak-to-peak 2 for [-1, 1] images), SSIM and, with ``feature_net``, the FID-style
    distance between ``x`` and its reconstructions (held-out images: the autoencoder never saw them)."""
    rec = reconstruct(ae, x)
    mse = (rec - x).pow(2).flatten(1).mean(1)
    out = {"psnr_db": float((10 * torch.log10(4.0 / mse.clamp_min(1e-12))).mean()),
           "ssim": float(ssim(rec, x).mean()), "mse": float(mse.mean()), "num_images": len(x)}
    if feature_net is not None:
        out["fid_recon"] = fid_from_features(extract_features(feature_net, rec), extract_features(feature_net, x))
    return out


def save_reconstructions(ae: AutoencoderKL, x: Tensor, path: Path) -> Path:
    """Originals (top row) above their reconstructions (bottom row)."""
    from ..viz import save_grid

    return save_grid(torch.cat([x, reconstruct(ae, x)]), path, nrow=len(x))
