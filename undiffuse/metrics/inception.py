"""The standard FID (Heusel et al. 2017) through an established package, where the user has it.

Inception weights cannot be downloaded here, so undiffuse never ships or re-implements them: this
calls torchmetrics' ``FrechetInceptionDistance`` (which uses torch-fidelity's port of the
original TensorFlow Inception, pool3 features), with weights the user already has — cached by
torch-fidelity, or a file passed as ``weights_path``. Results are labelled "standard FID" and are
not comparable with the feature-net distances in ``fid.py``.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

INSTALL_HINT = ("the standard FID needs torchmetrics with torch-fidelity (`pip install torchmetrics "
                "torch-fidelity`) and the FID Inception weights (pt_inception-2015-12-05-6726825d.pth), "
                "either in torch-fidelity's cache or passed with --inception-weights PATH")


class UnavailableError(RuntimeError):
    """The standard FID cannot run here: a package or the Inception weights are missing."""


def _to_unit_rgb(x: Tensor) -> Tensor:
    """[-1, 1] images, 1 or 3 channels -> [0, 1] RGB, as torchmetrics' normalize=True expects."""
    x = ((x.clamp(-1, 1) + 1) / 2).float()
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def standard_fid(fake: Tensor, real: Tensor, weights_path: str | Path | None = None,
                 batch_size: int = 100) -> float:
    """FID between two image sets in [-1, 1] with the standard Inception network."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        raise UnavailableError(f"{INSTALL_HINT} ({e})") from None
    if weights_path is not None and not Path(weights_path).is_file():
        raise UnavailableError(f"Inception weights {weights_path} not found; {INSTALL_HINT}")
    try:
        metric = FrechetInceptionDistance(feature=2048, normalize=True,
                                          feature_extractor_weights_path=weights_path)
    except Exception as e:  # torch-fidelity tries to download missing weights; offline it fails
        raise UnavailableError(f"could not load the Inception network: {e}. {INSTALL_HINT}") from None
    with torch.inference_mode():
        for images, is_real in ((real, True), (fake, False)):
            for i in range(0, len(images), batch_size):
                metric.update(_to_unit_rgb(images[i:i + batch_size]), real=is_real)
        return float(metric.compute())
