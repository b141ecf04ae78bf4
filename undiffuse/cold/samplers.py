"""Samplers of Cold Diffusion (Bansal et al. 2022, "Cold Diffusion: Inverting Arbitrary Image
Transforms Without Noise", sec. 3 and 5) for any ``Degradation`` of ``undiffuse.cold.degradations``.

The restoration operator is any callable ``restore(x, t) -> x0_hat`` with ``t`` a (B,) long tensor of
severities (``processes.cold.ColdRestorer`` wraps a network). Every sampler here has the signature

    sampler(restore, degradation, x, t_start=None, *, severities=None, state=None, callback=None)

``x`` is the degraded batch at severity ``t_start`` (default T); ``severities`` optionally lists the
decreasing severities to visit, from ``t_start`` down to 0 (default: every one, as the paper);
``state`` is the degradation's random state that produced ``x`` (mask centres, snow, noise): it is
needed by random degradations, and defaults to the one ``D`` draws with no generator, which matches
``x = D(x0, t)`` called without a generator. ``callback`` receives ``{"i", "t", "step", "x",
"x0_hat"}`` before each update (``t = step / T`` in [0, 1], as the other samplers report levels).

* ``naive`` — Algorithm 1: ``x_{s-1} = D(R(x_s, s), s - 1)``.
* ``improved`` — Algorithm 2: ``x_{s-1} = x_s - D(x0_hat, s) + D(x0_hat, s - 1)``.
* ``direct`` — one-shot restoration ``R(x_t, t)``.

Why Algorithm 2 is better (the paper's sec. 3.3). Suppose the restorer is off by an error ``e``:
``x0_hat = x0 + e``. Algorithm 1 puts the whole error into the next state:
``x_{s-1} = D(x0 + e, s - 1)``, which for a linear degradation ``D(x, s) = A_s x`` is
``D(x0, s - 1) + A_{s-1} e``. Algorithm 2 only keeps the error's *difference* between two adjacent
severities: from ``x_s = D(x0, s)``,

    x_{s-1} = D(x0, s - 1) + [D(x0 + e, s - 1) - D(x0, s - 1)] - [D(x0 + e, s) - D(x0, s)]
            = D(x0, s - 1) + (A_{s-1} - A_s) e  =  D(x0, s - 1) + A_{s-1} (I - G_s) e,

where ``G_s`` is the one-step operator (``A_s = G_s A_{s-1}``). To first order, one more step of
degradation barely changes a smooth error, ``(I - G_s) e ~ 0``: the restorer's error cancels. The
paper's version: for ``D(x, s) ~ x + s v`` (first-order Taylor expansion in s, with the
degradation direction v not depending on x), ``x_{s-1} = x0 + s v - (x0_hat + s v) + (x0_hat +
(s - 1) v) = x0 + (s - 1) v = D(x0, s - 1)`` for *any* x0_hat. Summing the updates telescopes:
with a constant error, Algorithm 2 ends at ``x0 + (I - A_T) e`` while Algorithm 1 ends at
``x0 + e``; the part of ``e`` that the full degradation leaves intact (``A_T e ~ e``: its smooth
part) disappears. ``tests/test_cold.py`` checks both identities on the blur.

Generation (sec. 5, "Cold generation"): a fully degraded image keeps little of x0 (blur: only the
channel means), and a deterministic sampler maps one x_T to one image, so the start must be drawn
from the distribution of fully degraded images, and slightly perturbed. ``GaussianMixturePrior`` fits a Gaussian mixture (scikit-learn) to the features
``degradation.summarize(D(x0, T))`` of training images (for blur: the per-channel means, as the
paper does) and samples from it; ``generate`` adds a small Gaussian noise to x_T to break the
symmetry (the paper uses a standard deviation of 0.002, our default; the official code's
``all_sample`` uses 0.001 and subtracts it at the end, ``remove_noise=True``) and runs Algorithm 2.
Degradations that know their end state (``gaussian``, ``fade``) give x_T and its state through
``degradation.prior`` and need no mixture.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .degradations import Degradation, State
from .prior import GaussianMixturePrior

Restorer = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[dict], None]

#: Standard deviation of the symmetry-breaking noise added to generated x_T (Bansal et al. 2022, sec. 5).
GENERATION_NOISE = 0.002


def severity_schedule(degradation: Degradation, t_start: int | None = None,
                      severities=None) -> list[int]:
    """The decreasing integer severities a sampler visits: ``severities`` as given (checked), or
    every one from ``t_start`` (default T) down to 0."""
    big = degradation.num_steps
    if severities is None:
        t = big if t_start is None else int(t_start)
        if not 0 <= t <= big:
            raise ValueError(f"t_start must lie in 0..{big} (T), got {t}")
        return list(range(t, -1, -1))
    sev = [int(s) for s in severities]
    if t_start is not None and sev[:1] != [int(t_start)]:
        raise ValueError(f"severities must start at t_start = {t_start}, got {sev}")
    if not sev or sev[-1] != 0 or sev[0] > big or any(a <= b for a, b in zip(sev, sev[1:])):
        raise ValueError(f"severities must decrease strictly from at most T = {big} to 0, got {sev}")
    return sev


def _state(degradation: Degradation, x: Tensor, state: State) -> State:
    if degradation.random and state is None:
        return degradation.sample_state(x.shape, None, x.device, x.dtype)
    return state


def report(callback: Callback | None, i: int, s: int, degradation: Degradation, x: Tensor,
            x0_hat: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "t": s / degradation.num_steps, "step": s, "x": x, "x0_hat": x0_hat})


def _full(s: int, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), s, dtype=torch.long, device=x.device)


def naive(restore: Restorer, degradation: Degradation, x: Tensor, t_start: int | None = None, *,
          severities=None, state: State = None, callback: Callback | None = None) -> Tensor:
    """Algorithm 1 of Bansal et al. 2022: ``x0_hat = R(x_s, s)``, ``x_{s'} = D(x0_hat, s')`` for the
    next severity s' (s - 1 by default); returns ``D(x0_hat, 0) = x0_hat`` of the last step."""
    sev = severity_schedule(degradation, t_start, severities)
    state = _state(degradation, x, state)
    for i, (s, nxt) in enumerate(zip(sev, sev[1:])):
        x0_hat = restore(x, _full(s, x))
        report(callback, i, s, degradation, x, x0_hat)
        x = degradation(x0_hat, nxt, state=state)
    return x


def improved(restore: Restorer, degradation: Degradation, x: Tensor, t_start: int | None = None, *,
             severities=None, state: State = None, callback: Callback | None = None) -> Tensor:
    """Algorithm 2 of Bansal et al. 2022: ``x0_hat = R(x_s, s)``,
    ``x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')`` (s' = s - 1 by default); returns x_0.
    See the module docstring for why the restorer's error cancels to first order."""
    sev = severity_schedule(degradation, t_start, severities)
    state = _state(degradation, x, state)
    for i, (s, nxt) in enumerate(zip(sev, sev[1:])):
        x0_hat = restore(x, _full(s, x))
        report(callback, i, s, degradation, x, x0_hat)
        x = x - degradation(x0_hat, s, state=state) + degradation(x0_hat, nxt, state=state)
    return x


def direct(restore: Restorer, degradation: Degradation, x: Tensor, t_start: int | None = None, *,
           severities=None, state: State = None, callback: Callback | None = None) -> Tensor:
    """One-shot restoration ``R(x_t, t)`` (the paper's "direct" baseline). ``severities`` and
    ``state`` are accepted for a uniform signature and not used."""
    t = severity_schedule(degradation, t_start, severities)[0]
    x0_hat = restore(x, _full(t, x))
    report(callback, 0, t, degradation, x, x0_hat)
    return x0_hat


COLD_SAMPLERS: dict[str, Callable] = {"naive": naive, "improved": improved, "direct": direct}


def cold_sample(restore: Restorer, degradation: Degradation, x: Tensor, *, sampler: str = "improved",
                **kwargs) -> Tensor:
    """Run the cold sampler named ``sampler`` ("naive", "improved" or "direct")."""
    if sampler not in COLD_SAMPLERS:
        raise ValueError(f"unknown cold sampler {sampler!r}; choose one of {sorted(COLD_SAMPLERS)}")
    return COLD_SAMPLERS[sampler](restore, degradation, x, **kwargs)


# --- generation ----------------------------------------------------------------------------------


def generate(restore: Restorer, degradation: Degradation, n: int, *,
             prior: GaussianMixturePrior | None = None, shape: tuple[int, ...] | None = None,
             noise_std: float = GENERATION_NOISE, remove_noise: bool = False, sampler: str = "improved",
             generator: torch.Generator | None = None, severities=None, callback: Callback | None = None,
             device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Generate ``n`` images: draw x_T, add ``noise_std`` Gaussian noise, restore with ``sampler``.

    x_T comes from ``prior`` (a fitted ``GaussianMixturePrior``) or, when None, from
    ``degradation.prior(shape)`` (``gaussian``, ``fade``; ``shape`` = (C, H, W) is then required).
    Random numbers, in order: the prior draw, then the symmetry-breaking noise, all from
    ``generator`` (the global RNG is not used). With ``remove_noise`` that noise is subtracted from
    the result, as the official code's ``all_sample`` does. ``generator=None``: a fresh generator
    seeded with 0.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    state = None
    if prior is not None:
        x = prior.sample(n, degradation, generator, device, dtype)
    else:
        if shape is None:
            raise ValueError("generate: give a fitted prior, or shape=(C, H, W) for a degradation "
                             "with a known end state")
        drawn = degradation.prior((n, *shape), generator, device, dtype)
        if drawn is None:
            raise ValueError(f"{degradation.name} has no built-in prior: fit a GaussianMixturePrior "
                             "to fully degraded training images and pass it as prior=")
        x, state = drawn
    if degradation.random and state is None:
        state = degradation.sample_state(x.shape, generator, device, dtype)
    noise = noise_std * torch.randn(x.shape, generator=generator,
                                    device=generator.device).to(device=device, dtype=dtype)
    out = cold_sample(restore, degradation, x + noise, sampler=sampler, severities=severities,
                      state=state, callback=callback)
    return out - noise if remove_noise else out


__all__ = ["naive", "improved", "direct", "cold_sample", "COLD_SAMPLERS", "severity_schedule",
           "generate", "GENERATION_NOISE"]
