"""Where cold generation starts (Bansal et al. 2022, sec. 5, "Cold generation"): a Gaussian mixture
over the fully degraded training images, and the run file that keeps it.

A fully degraded image keeps little of x0 (blur: the channel means, or the lowest Fourier modes with
``Blur(summary_modes=K)``), so generation draws x_T from the distribution of fully degraded images.
``GaussianMixturePrior`` fits one to ``degradation.summarize(D(x0, T))`` and samples it with a torch
generator; ``prepare_prior`` fits it when a run starts and writes ``RUN/cold_prior.json`` (JSON, no
pickle); degradations that know their end state (gaussian, fade) need none.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import atomic_write_text
from .degradations import Degradation

PRIOR_FILE = "cold_prior.json"
#: The most features (``degradation.summarize`` of one image) a generation prior is fitted to.
MAX_PRIOR_FEATURES = 1024
#: The most training images the prior is fitted to (a seeded random subset beyond that).
MAX_PRIOR_IMAGES = 10_000



class GaussianMixturePrior:
    """A Gaussian mixture over the features of fully degraded images, kept as plain arrays.

    ``fit`` runs scikit-learn's ``GaussianMixture`` (full covariances) on
    ``degradation.summarize(D(x0, T))``; where the degradation's ``summary_scales_differ`` (blur's
    Fourier modes span eight orders of magnitude: std 2 for the mean, 1e-7 for modes the blur has
    all but erased) each feature is scaled to unit variance first, because sklearn adds
    ``reg_covar`` to the variances in the features' own units and so drowned the small modes in
    noise 10^4 times their size. Pixel-unit features (pixelate's block means) are fitted as they
    are: scaled, rarely-inked border blocks weigh as much as the centre in the clustering, and the
    pixelate mixture drew worse digits (docs/cold.md).
    ``sample`` draws with a torch generator (component by its weight, then ``mean + L eps`` with L
    the Cholesky factor, taken of the correlation matrix for the same reason) and maps the features
    back to images with ``degradation.expand``. ``to_dict`` / ``from_dict`` (and ``to_json``) hold weights, means and
    covariances as lists: no pickle.
    """

    def __init__(self, weights, means, covariances, shape: tuple[int, ...], degradation: dict | None = None):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.covariances = np.asarray(covariances, dtype=np.float64)
        self.shape = tuple(int(s) for s in shape)
        self.degradation = degradation
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.covariances.shape != (k, d, d):
            raise ValueError(f"mixture arrays disagree: weights {self.weights.shape}, means "
                             f"{self.means.shape}, covariances {self.covariances.shape}")

    @classmethod
    def fit(cls, degradation: Degradation, x0: Tensor, *, n_components: int = 1, seed: int = 0,
            batch_size: int = 512, reg_covar: float = 1e-6, generator: torch.Generator | None = None,
            standardize: bool | None = None) -> GaussianMixturePrior:
        """Fit to the fully degraded images of ``x0`` (N, C, H, W). ``n_components``: the paper's
        deblurring generation fits a simple mixture to the channel means; 1 is the default here.
        ``generator`` draws the degradation's state for random degradations. ``standardize``: fit
        to unit-variance features (default: ``degradation.summary_scales_differ``)."""
        from sklearn.mixture import GaussianMixture

        feats = []
        with torch.no_grad():
            for chunk in x0.split(batch_size):
                x_T = degradation(chunk, degradation.num_steps, generator=generator)
                feats.append(degradation.summarize(x_T).double().cpu())
        z = torch.cat(feats).numpy()
        if standardize is None:
            standardize = degradation.summary_scales_differ
        mu, s = (z.mean(0), z.std(0)) if standardize else (np.zeros(z.shape[1]), np.ones(z.shape[1]))
        s = np.where(s > 0, s, 1.0)  # a constant feature: any scale; reg_covar keeps it positive
        gmm = GaussianMixture(n_components, covariance_type="full", reg_covar=reg_covar,
                              random_state=seed).fit((z - mu) / s)
        return cls(gmm.weights_, gmm.means_ * s + mu, gmm.covariances_ * np.outer(s, s), tuple(x0.shape[1:]),
                   degradation.config())

    def sample(self, n: int, degradation: Degradation, generator: torch.Generator | None = None,
               device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
        """``n`` fully degraded images (n, C, H, W) drawn from the mixture (from ``generator``;
        a fresh one seeded with 0 when None, never the global RNG)."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        gen_dev = generator.device
        w = torch.as_tensor(self.weights, dtype=torch.float64, device=gen_dev)
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, device=gen_dev, dtype=torch.float64)
        chol = scaled_cholesky(torch.as_tensor(self.covariances, device=gen_dev))
        mu = torch.as_tensor(self.means, device=gen_dev)
        z = mu[comp] + torch.einsum("nij,nj->ni", chol[comp], eps)
        return degradation.expand(z, self.shape).to(device=device, dtype=dtype)

    def to_dict(self) -> dict:
        return {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": self.covariances.tolist(), "shape": list(self.shape),
                "degradation": self.degradation}

    @classmethod
    def from_dict(cls, d: dict) -> GaussianMixturePrior:
        return cls(d["weights"], d["means"], d["covariances"], tuple(d["shape"]), d.get("degradation"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> GaussianMixturePrior:
        return cls.from_dict(json.loads(text))


def scaled_cholesky(cov: Tensor) -> Tensor:
    """Cholesky factors of a batch of covariances (..., d, d) as ``diag(s) chol(R)``, with ``s`` the
    standard deviations and ``R`` the correlations: exact, and stable where the variances span
    many orders of magnitude (a plain factorisation loses the small ones to rounding)."""
    std = cov.diagonal(dim1=-2, dim2=-1).sqrt()
    corr = cov / (std[..., :, None] * std[..., None, :])
    return std[..., :, None] * torch.linalg.cholesky(corr)


def has_own_prior(degradation: Degradation, shape: tuple[int, ...]) -> bool:
    """Whether the degradation draws fully degraded images itself (gaussian, fade)."""
    return degradation.prior((1, *shape)) is not None


def fit_prior(degradation: Degradation, x: torch.Tensor, seed: int = 0,
              n_components: int = 1) -> GaussianMixturePrior | None:
    """A Gaussian mixture over the fully degraded ``x`` (see the module docstring); None when the
    degradation has its own prior or the features are too many."""
    if has_own_prior(degradation, tuple(x.shape[1:])):
        return None
    gen = torch.Generator().manual_seed(seed)
    if len(x) > MAX_PRIOR_IMAGES:
        x = x[torch.randperm(len(x), generator=gen)[:MAX_PRIOR_IMAGES]]
    with torch.no_grad():
        d = degradation.summarize(degradation(x[:1], degradation.num_steps, generator=gen)).shape[1]
    if d > MAX_PRIOR_FEATURES:
        warnings.warn(f"{degradation.name}: the fully degraded images have {d} features, more than the "
                      f"{MAX_PRIOR_FEATURES} a generation prior is fitted to; this run restores images "
                      "but does not generate them", stacklevel=2)
        return None
    return GaussianMixturePrior.fit(degradation, x, n_components=n_components, seed=seed,
                                    generator=torch.Generator().manual_seed(seed))


def write_prior(run_dir: Path, prior: GaussianMixturePrior) -> Path:
    path = Path(run_dir) / PRIOR_FILE
    atomic_write_text(path, prior.to_json())
    return path


def read_prior(run_dir: Path) -> GaussianMixturePrior | None:
    """The run's generation prior, or None when it has none."""
    path = Path(run_dir) / PRIOR_FILE
    if not path.is_file():
        return None
    try:
        return GaussianMixturePrior.from_json(path.read_text())
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path} is corrupt ({e}); delete it and resume training to refit it") from None


def prepare_prior(run_dir: Path, degradation: Degradation, x: torch.Tensor,
                  seed: int = 0, n_components: int = 1) -> GaussianMixturePrior | None:
    """Fit the prior (deterministic: the same data, seed and size give the same prior, also on
    resume) and write it; remove a stale one when this run has none."""
    prior = fit_prior(degradation, x, seed, n_components)
    if prior is not None:
        write_prior(run_dir, prior)
    else:
        (Path(run_dir) / PRIOR_FILE).unlink(missing_ok=True)
    return prior
