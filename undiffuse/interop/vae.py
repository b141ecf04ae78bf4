"""The vae/ folder of a latent run: placeholder until latent diffusion runs exist on this branch."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .diffusers_unet import InteropError

__all__ = ["latent_autoencoder", "export_vae"]


def latent_autoencoder(cfg: dict, run_dir: Path) -> nn.Module | None:
    """The autoencoder a latent run decodes with, or None for a pixel-space run."""
    if cfg.get("latent") or cfg.get("autoencoder"):
        raise InteropError(f"{run_dir} is a latent run: its vae/ export is not implemented yet")
    return None


def export_vae(autoencoder: nn.Module, folder: Path) -> None:
    raise InteropError("latent runs are not exported yet")
