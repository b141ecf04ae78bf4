"""The small supervised fitting loop shared by undiffuse's helper nets.

The FID feature net (``metrics.features``), the shapes adherence judge (``metrics.adherence``) and
the noisy guidance classifier (``classifier.training``) all fit a classifier the same way: build it
under a fixed seed without touching the global RNG, draw batches from a seeded generator, and step
an optimiser and its schedule once per batch. Only the batches, the loss and the recipe differ, so
those are the arguments; the order of random draws (batch indices first, then whatever the loss
draws for that batch) is the one each caller had before, so their fitted nets are unchanged.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
from torch import Tensor, nn

__all__ = ["seeded_init", "epoch_batches", "random_batches", "one_cycle_adam", "fit"]

M = TypeVar("M", bound=nn.Module)


def seeded_init(seed: int, build: Callable[[], M]) -> M:
    """``build()`` under ``torch.manual_seed(seed)`` in a forked CPU RNG: the same initial weights for
    a seed, and the caller's global RNG left exactly as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def epoch_batches(n: int, batch_size: int, epochs: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Index batches of ``epochs`` passes over ``range(n)``, each pass in a fresh seeded permutation
    (drawn lazily, at the start of its pass); the last batch of a pass may be smaller."""
    _check_sizes(n, batch_size)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            yield perm[i:i + batch_size]


def random_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[Tensor]:
    """``steps`` batches of ``batch_size`` indices drawn uniformly from ``range(n)`` with replacement."""
    _check_sizes(n, batch_size)
    for _ in range(steps):
        yield torch.randint(n, (batch_size,), generator=generator)


def _check_sizes(n: int, batch_size: int) -> None:
    if n < 1:
        raise ValueError(f"no training examples (n = {n}); give a non-empty training set")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def one_cycle_adam(net: nn.Module, lr: float, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam with a one-cycle learning rate peaking at ``lr`` (Smith & Topin 2019): converges in few epochs."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps)


def fit(net: nn.Module, batch_loss: Callable[[Tensor], Tensor], batches: Iterable[Tensor],
        opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, *,
        clip_norm: float | None = None) -> list[float]:
    """One optimiser and schedule step per batch of indices: ``loss = batch_loss(indices)``.

    ``batch_loss`` gathers, augments or noises the batch itself (drawing from the same generator as
    ``batches`` keeps a fit reproducible). ``clip_norm`` clips the gradient norm before each step.
    The net trains in train mode and is left in eval mode; returns the loss of every step.
    """
    losses: list[float] = []
    net.train()
    for idx in batches:
        loss = batch_loss(idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(net.parameters(), clip_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    net.eval()
    return losses
