"""The restoration operator R(x_t, t) -> x0 of Cold Diffusion (Bansal et al. 2022, sec. 3) and its
training loss: a network wrapped to read the degraded image the way it learns best (``standardize``)
and to predict x0 or the residual x0 - x_t (``residual``, the official code's ``--residual``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .degradations import Degradation, State


class ColdRestorer(nn.Module):
    """A network as the restoration operator ``R(x_t, t) -> x0_hat`` of Bansal et al. 2022 (sec. 3).

    Calls ``net(x_t, degradation.noise_label(t), cond)``; with ``residual=True`` the network predicts
    ``x0 - x_t`` instead (the official code's ``--residual`` option). Any callable
    ``restore(x, t) -> x0_hat`` works with the samplers; this is the one for undiffuse's nets.

    ``standardize=True`` feeds the network ``standardized_input(x_t)``: per image and channel,
    ``(x_t - mu) / s`` beside ``mu`` and ``log s`` as constant planes (3C input channels). Heavy blur
    leaves the digit in deviations of ~1e-3 around the image mean: bf16 (8 mantissa bits) rounds
    them away and a raw-input net must learn a gain of ~1000 first; standardized, they are O(1) and
    nothing is lost (``mu`` and ``s`` travel beside them).
    """

    def __init__(self, net: nn.Module, degradation: Degradation, residual: bool = False,
                 standardize: bool = False):
        super().__init__()
        self.net, self.degradation = net, degradation
        self.residual, self.standardize = residual, standardize

    @property
    def process(self) -> Degradation:
        """The degradation, under the name every model has (the guidance wrappers read it)."""
        return self.degradation

    def forward(self, x: Tensor, t: int | Tensor, cond: Tensor | None = None) -> Tensor:
        t = self.degradation.severities(t, x)
        x_in = standardized_input(x) if self.standardize else x
        out = self.net(x_in, self.degradation.noise_label(t).to(x.device), cond).to(x.dtype)
        return x + out if self.residual else out


#: The floor of the standard deviation in ``standardized_input`` (a flat image has s = 0).
STANDARDIZE_EPS = 1e-5


def standardized_input(x: Tensor) -> Tensor:
    """``cat((x - mu) / s, mu, log s)`` over channels, ``mu`` and ``s`` the per-image, per-channel
    mean and standard deviation over pixels (``s`` floored at STANDARDIZE_EPS); computed in float32."""
    x = x.float()
    mu = x.mean((-2, -1), keepdim=True)
    s = (x - mu).square().mean((-2, -1), keepdim=True).add(STANDARDIZE_EPS ** 2).sqrt()
    return torch.cat([(x - mu) / s, mu.expand_as(x), s.log().expand_as(x)], dim=1)


def cold_loss(restore, degradation: Degradation, x0: Tensor, *, t: Tensor | None = None,
              generator: torch.Generator | None = None, state: State = None, cond: Tensor | None = None,
              loss: str = "l1") -> Tensor:
    """Per-image training loss of Bansal et al. 2022, sec. 3: ``|R(D(x0, t), t) - x0|`` averaged
    over pixels (``loss="l1"``, the paper's) or squared (``"l2"``), with ``t ~ U{1..T}`` unless given.

    The severities and the degradation state are drawn from ``generator`` (in that order) when not
    given, so one generator reproduces a training run (with ``generator=None`` a random
    degradation's state is the fixed private-seed one: pass a generator when training). ``D`` runs
    without gradients; ``restore`` is called as ``restore(x_t, t)`` or ``restore(x_t, t, cond)``.
    Returns a (B,) tensor; take ``.mean()``.
    """
    if t is None:
        t = degradation.sample_t(x0.shape[0], generator, x0.device)
    if degradation.random and state is None:
        gen = generator if generator is not None else torch.Generator().manual_seed(degradation.seed)
        state = degradation.sample_state(x0.shape, gen, x0.device, x0.dtype)
    with torch.no_grad():
        x_t = degradation(x0, t, state=state)
    x0_hat = restore(x_t, t) if cond is None else restore(x_t, t, cond)
    diff = x0_hat - x0
    if loss == "l1":
        per = diff.abs()
    elif loss == "l2":
        per = diff.square()
    else:
        raise ValueError(f"unknown cold loss {loss!r}; choose 'l1' (the paper's) or 'l2'")
    return per.flatten(1).mean(1)
