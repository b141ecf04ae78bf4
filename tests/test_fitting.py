"""The shared fitting loop (``undiffuse.fitting``) behind the feature net, the shapes judge and the
noisy classifier: it learns, it is reproducible for a seed, and it leaves the global RNG alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from undiffuse.fitting import epoch_batches, fit, one_cycle_adam, random_batches, seeded_init


def _blobs(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    """Two well separated Gaussian blobs in 2-D (centres 6 standard deviations apart)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=gen) + 3.0 * (2 * y[:, None] - 1).float()
    return x, y


def _fit_blobs(seed: int, clip_norm: float | None = None, by_epoch: bool = True) -> tuple[nn.Module, list[float]]:
    x, y = _blobs()
    net = seeded_init(seed, lambda: nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2)))
    gen = torch.Generator().manual_seed(seed)
    batches = epoch_batches(len(x), 32, 3, gen) if by_epoch else random_batches(len(x), 32, 40, gen)
    opt, sched = one_cycle_adam(net, 1e-2, 3 * 13 if by_epoch else 40)
    # The loss draws from the same generator as the batches (as the callers' augmentation does).
    losses = fit(net, lambda b: F.cross_entropy(net(x[b] + 0.1 * torch.randn(len(b), 2, generator=gen)), y[b]),
                 batches, opt, sched, clip_norm=clip_norm)
    return net, losses


@pytest.mark.parametrize("by_epoch, clip_norm", [(True, None), (False, 1.0)])
def test_fit_separates_a_separable_toy_set(by_epoch, clip_norm):
    net, losses = _fit_blobs(0, clip_norm, by_epoch)
    x, y = _blobs()
    assert not net.training  # left in eval mode
    assert len(losses) == (39 if by_epoch else 40) and losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        assert float((net(x).argmax(1) == y).float().mean()) >= 0.98


def test_fit_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, losses_a = _fit_blobs(5)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG was not drawn from
    b, losses_b = _fit_blobs(5)
    c, _ = _fit_blobs(6)
    assert losses_a == losses_b
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_epoch_batches_visit_every_index_once_per_epoch():
    batches = list(epoch_batches(10, 4, 2, torch.Generator().manual_seed(0)))
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    for epoch in (batches[:3], batches[3:]):
        assert sorted(torch.cat(epoch).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(batches[:3]), torch.cat(batches[3:]))  # a fresh order each epoch


@pytest.mark.parametrize("make", [epoch_batches, random_batches])
def test_empty_data_or_batches_are_refused(make):
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match=r"no training examples \(n = 0\)"):
        next(make(0, 4, 1, gen))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        next(make(10, 0, 1, gen))
