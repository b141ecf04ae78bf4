"""The network's time input on either side: undiffuse's noise label for DDPM step n of N is
``1000 n / N`` (``preconditioning.noise_label``), diffusers' timestep is ``n - 1``.

Two ways to carry a net across:

* "positional" (diffusers' sinusoid of the timestep): our U-Net with ``label_scale = N / 1000`` and
  ``label_shift = -1`` embeds exactly that, so nets imported from diffusers get those settings and
  export back as they came;
* "learned" (diffusers' ``nn.Embedding(N, C)`` indexed by the timestep): a table whose row n - 1 is
  what our net's time embedding sees at step n. Exporting one of our own nets writes this table,
  computed by the net's own code, so diffusers sees the same numbers without a change to any weight
  (the one-step shift of a sinusoid could be folded into ``linear_1`` as a rotation instead, but
  that rounds every weight of it, and no longer reads back bit for bit).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..nets import UNet, timestep_embedding
from ..preconditioning import noise_label
from ..processes import DDPM

__all__ = ["step_labels", "time_table", "positional_settings", "is_positional", "TABLE_ATOL"]

#: A learned table within this of ours is ours (sin / cos round differently on other CPUs).
TABLE_ATOL = 1e-5


def step_labels(process: DDPM) -> Tensor:
    """Our float32 noise label at each step n = 1..N, i.e. at diffusers' timesteps 0..N-1 (computed
    as the samplers compute it: levels n / N in float64, then the label, then float32)."""
    t = torch.arange(1, process.num_steps + 1, dtype=torch.float64) / process.num_steps
    return noise_label(process, t).to(torch.float32)


def time_table(net: UNet, process: DDPM) -> Tensor:
    """(N, channels): what ``net``'s time MLP receives at each diffusers timestep."""
    return timestep_embedding(net.time_label(step_labels(process)), net.time_emb.channels)


def positional_settings(num_steps: int) -> dict[str, float]:
    """Our U-Net settings that embed diffusers' timestep n - 1 from our label 1000 n / N."""
    return {"label_scale": num_steps / 1000, "label_shift": -1.0}


def is_positional(net: UNet, process: DDPM) -> bool:
    """Whether ``net`` already embeds diffusers' timesteps (it was imported from a positional UNet2DModel)."""
    settings = positional_settings(process.num_steps)
    return net.label_scale == settings["label_scale"] and net.label_shift == settings["label_shift"]
