"""What every cold degradation shares: integer severities, seeded states, configs, the loss.

Cold Diffusion (Bansal et al. 2022, "Cold Diffusion: Inverting Arbitrary Image Transforms Without
Noise") replaces Gaussian noise by any degradation ``D(x0, t)`` with an integer severity
``t in {0, ..., T}`` and ``D(x0, 0) = x0`` (sec. 3, "Generalized diffusion"), and trains a
restoration network ``R(x_t, t) ~ x0`` with ``min E ||R(D(x0, t), t) - x0||`` (sec. 3, its training
objective; the paper uses the L1 norm). Sampling is in ``undiffuse.cold.samplers``.

Conventions here, shared by every degradation in this package:

* images are (B, C, H, W) of any size and channel count, usually in [-1, 1];
* ``t`` is a Python int, a 0-d tensor or a (B,) integer tensor (one severity per image, as training
  draws them); ``D(x0, 0) = x0`` exactly, bit for bit;
* the degradations are differentiable in ``x0`` wherever the operation allows it (everything is
  built from linear maps, products, ``max`` and ``clamp``), so a loss may be taken through them;
* randomness (mask centres, snow layers, the image that fades in, Gaussian noise) lives in a
  *state*: a dict of tensors drawn by ``sample_state(shape, generator)`` from a ``torch.Generator``,
  never from the global RNG. With ``generator=None`` the state comes from a private generator seeded
  with the degradation's ``seed``, so ``D`` is then a fixed (deterministic) function. Samplers draw
  the state once and pass it to every ``D`` call, because Algorithm 2 compares ``D(x0_hat, s)`` with
  ``D(x0_hat, s - 1)`` and both must use the same mask, snow or noise.
"""
from __future__ import annotations

import inspect

import torch
from torch import Tensor

from ...processes.gaussian import bcast

State = dict[str, Tensor] | None


class Degradation:
    """Base class of the cold degradations. Subclasses set ``name`` and implement ``apply``.

    ``D(x0, t, generator=None, state=None)`` (``__call__``) checks and broadcasts ``t``, draws the
    state if the degradation is random and none was given, calls ``apply(x0, t, state)`` with ``t``
    a (B,) long tensor, and returns ``x0`` itself wherever ``t == 0``.
    """

    name = "base"

    def __init__(self, num_steps: int, seed: int = 0):
        if int(num_steps) < 1:
            raise ValueError(f"{self.name}: num_steps (T) must be at least 1, got {num_steps}")
        self.num_steps = int(num_steps)
        self.seed = int(seed)

    # --- what subclasses provide -------------------------------------------------------------

    @property
    def random(self) -> bool:
        """Whether ``D`` depends on a drawn state (then pass the same state to every call)."""
        return False

    def apply(self, x0: Tensor, t: Tensor, state: State) -> Tensor:
        raise NotImplementedError

    def draw_state(self, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, Tensor]:
        """Draw the random state for a batch of ``shape`` on the generator's device."""
        raise NotImplementedError

    # --- the call -----------------------------------------------------------------------------

    def __call__(self, x0: Tensor, t: int | Tensor, generator: torch.Generator | None = None,
                 state: State = None) -> Tensor:
        if x0.ndim != 4:
            raise ValueError(f"{self.name}: expected images of shape (B, C, H, W), got {tuple(x0.shape)}")
        t = self.severities(t, x0)
        if self.random and state is None:
            state = self.sample_state(x0.shape, generator, x0.device, x0.dtype)
        out = self.apply(x0, t, state)
        return torch.where(bcast(t, x0) == 0, x0, out)

    def severities(self, t: int | Tensor, x0: Tensor) -> Tensor:
        """``t`` as a (B,) long tensor on ``x0``'s device, checked to lie in {0, ..., T}."""
        t = torch.as_tensor(t, device=x0.device)
        if t.is_floating_point():
            if not bool((t == t.round()).all()):
                raise ValueError(f"{self.name}: severities are integers 0..{self.num_steps}, got {t}")
        t = t.long()
        if t.ndim == 0:
            t = t.expand(x0.shape[0])
        if t.shape != (x0.shape[0],):
            raise ValueError(f"{self.name}: t must be a scalar or have shape ({x0.shape[0]},), "
                             f"got {tuple(t.shape)}")
        if bool((t < 0).any()) or bool((t > self.num_steps).any()):
            raise ValueError(f"{self.name}: severities must lie in 0..{self.num_steps} (T), "
                             f"got {t.min().item()}..{t.max().item()}")
        return t

    def sample_state(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> State:
        """The random state for a batch of images of ``shape`` (None for deterministic ones).

        Drawn from ``generator`` (on its own device), or, when it is None, from a private generator
        seeded with ``self.seed``: the same state at every call. The global RNG is never touched.
        """
        if not self.random:
            return None
        gen = generator if generator is not None else torch.Generator().manual_seed(self.seed)
        state = self.draw_state(tuple(shape), gen)
        return {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                for k, v in state.items()}

    # --- the forward process as training and sampling use it -----------------------------------

    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu", weighting: str = "uniform") -> Tensor:
        """Training severities on {1, ..., T}: uniform (the paper's; the official code draws t in
        0..T-1 and applies t + 1 steps, the same thing), or ``weighting="linear"``, P(t) = 2t / (T(T+1)),
        toward the hard levels. Drawn on the generator's device, then moved; like
        ``GaussianProcess.sample_t``, ``generator=None`` means torch's global RNG."""
        gen_device = generator.device if generator is not None else "cpu"
        if weighting == "uniform":
            t = torch.randint(1, self.num_steps + 1, (n,), generator=generator, device=gen_device)
        elif weighting == "linear":
            w = torch.arange(1, self.num_steps + 1, dtype=torch.float64, device=gen_device)
            t = torch.multinomial(w, n, replacement=True, generator=generator) + 1
        else:
            raise ValueError(f"unknown severity weighting {weighting!r}; choose one of {SEVERITY_WEIGHTINGS}")
        return t.to(device)

    def noise_label(self, t: Tensor) -> Tensor:
        """What a network's time embedding sees: 1000 t / T (the DDPM-style range of undiffuse's nets)."""
        return 1000.0 * torch.as_tensor(t, dtype=torch.float32) / self.num_steps

    def ladder(self, x0: Tensor, columns: int | None = None, state: State = None,
               generator: torch.Generator | None = None) -> tuple[list[int], Tensor]:
        """The severities shown and ``D(x0, t)`` at each: (severities, tensor (len, B, C, H, W)).

        ``columns`` evenly spaced severities from 0 to T (default: every one of them).
        """
        k = self.num_steps + 1 if columns is None else max(2, int(columns))
        ts = sorted({round(i * self.num_steps / (k - 1)) for i in range(k)})
        if self.random and state is None:
            state = self.sample_state(x0.shape, generator, x0.device, x0.dtype)
        return ts, torch.stack([self(x0, t, state=state) for t in ts])

    # --- the fully degraded end, for generation (``undiffuse.cold.samplers``) ------------------

    def summarize(self, x_T: Tensor) -> Tensor:
        """Fully degraded images (N, C, H, W) -> the (N, d) features a Gaussian mixture is fitted to.

        Default: every pixel. Degradations whose end state is simpler override it (blur: the channel
        means; pixelate: the block means), together with ``expand``.
        """
        return x_T.flatten(1)

    def expand(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        """The inverse of ``summarize``: (N, d) features -> (N, C, H, W) images of ``shape`` (C, H, W)."""
        return z.reshape(z.shape[0], *shape)

    @property
    def summary_scales_differ(self) -> bool:
        """Whether ``summarize``'s features live on scales of their own (blur's Fourier modes, damped
        by the blur over orders of magnitude), so a mixture is fitted to them scaled to unit variance;
        False for pixel-unit features (pixels, block means), fitted as they are: there the scale
        says which features matter, and the clustering should weigh them so."""
        return False

    def prior(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
              ) -> tuple[Tensor, State] | None:
        """A draw of fully degraded images without fitting anything, with the state that goes with
        them, when the degradation knows its end state (Gaussian noise, fade); None otherwise."""
        return None

    # --- configs ------------------------------------------------------------------------------

    def settings(self) -> dict:
        """The constructor arguments, read back from attributes of the same names."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def config(self) -> dict:
        """A JSON-serialisable dict that ``from_config`` turns back into an equal degradation."""
        return {"type": self.name, **self.settings()}

    @classmethod
    def from_config(cls, cfg: dict) -> Degradation:
        cfg = dict(cfg)
        kind = cfg.pop("type", cls.name)
        if kind != cls.name:
            raise ValueError(f"config of type {kind!r} given to {cls.__name__} ({cls.name!r})")
        return cls(**cfg)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()

    __hash__ = object.__hash__


class SeparableDegradation(Degradation):
    """A degradation that is a linear map per image axis: D(x0, t) = A_t(H) x0 A_t(W)^T.

    Subclasses build the (T + 1, n, n) float64 stack A_0 .. A_T for an axis of length n in
    ``axis_matrices``; it is cached per length (and per device and dtype when applied), so any
    severity costs two small matrix products, whatever t."""

    def __init__(self, num_steps: int, seed: int = 0):
        super().__init__(num_steps, seed)
        self._cache: dict[tuple, Tensor] = {}

    def axis_matrices(self, n: int) -> Tensor:
        raise NotImplementedError

    def matrices(self, n: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float64) -> Tensor:
        """A_0 .. A_T for an axis of length n, built once in float64 and cached per device and dtype."""
        exact = (n, "cpu", torch.float64)
        if exact not in self._cache:
            self._cache[exact] = self.axis_matrices(n)
        key = (n, str(torch.device(device)), dtype)
        if key not in self._cache:
            self._cache[key] = self._cache[exact].to(device=device, dtype=dtype)
        return self._cache[key]

    def apply(self, x0: Tensor, t: Tensor, state: State) -> Tensor:
        ah = self.matrices(x0.shape[-2], x0.device, x0.dtype)[t]  # (B, H, H)
        aw = self.matrices(x0.shape[-1], x0.device, x0.dtype)[t]  # (B, W, W)
        return torch.einsum("bij,bcjk,blk->bcil", ah, x0, aw)


#: How training draws severities (``Degradation.sample_t``).
SEVERITY_WEIGHTINGS = ("uniform", "linear")
