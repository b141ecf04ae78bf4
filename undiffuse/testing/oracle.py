"""Exact answers for Gaussian-mixture data: the oracle denoiser and the exact densities.

If x0 ~ sum_k pi_k N(mu_k, diag(s_k^2)), then x_t = alpha x0 + sigma eps is again a mixture,
x_t ~ sum_k pi_k N(alpha mu_k, diag(alpha^2 s_k^2 + sigma^2)), and the ideal denoiser is

    E[x0 | x_t] = sum_k r_k(x_t) [mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k)],

with r_k the component responsibilities under the noisy mixture (Bayes' rule per component).
Plugged into any sampler in place of a trained network, it lets tests measure a sampler's error
against the true distribution with no training.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..denoiser import Prediction
from ..processes.gaussian import GaussianProcess, bcast


class GaussianMixture:
    """A mixture of axis-aligned Gaussians in D dimensions (float64).

    Args:
        means: (K, D). stds: (K, D), (K,) or a float. weights: (K,), normalised here.
    """

    def __init__(self, means: Tensor, stds: Tensor | float, weights: Tensor | None = None):
        self.means = torch.as_tensor(means, dtype=torch.float64)
        k, d = self.means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.ndim == 1:
            stds = stds[:, None]  # one isotropic std per component
        self.stds = stds.expand(k, d).clone()
        w = torch.ones(k, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.weights = w / w.sum()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def sample(self, n: int, generator: torch.Generator | None = None,
               component: int | None = None) -> tuple[Tensor, Tensor]:
        """n draws (n, D) and their component indices; ``component`` fixes the component."""
        if component is None:
            k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        else:
            k = torch.full((n,), component, dtype=torch.long)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z, k

    def noised(self, alpha: float, sigma: float) -> "GaussianMixture":
        """The law of alpha x0 + sigma eps: the marginal q(x_t)."""
        var = alpha**2 * self.stds**2 + sigma**2
        return GaussianMixture(alpha * self.means, var.sqrt(), self.weights)

    def component_log_prob(self, x: Tensor) -> Tensor:
        """log pi_k + log N(x; mu_k, s_k^2), shape (N, K)."""
        x = x.to(torch.float64).reshape(x.shape[0], 1, -1)
        var = self.stds**2
        quad = ((x - self.means) ** 2 / var).sum(-1)
        log_norm = torch.log(2 * math.pi * var).sum(-1)
        return torch.log(self.weights) - 0.5 * (quad + log_norm)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density of each row of x (N, D), in nats."""
        return torch.logsumexp(self.component_log_prob(x), dim=1)

    def responsibilities(self, x: Tensor) -> Tensor:
        return torch.softmax(self.component_log_prob(x), dim=1)


class OracleDenoiser:
    """The exact E[x0 | x_t] for GaussianMixture data: a drop-in for ``Denoiser``.

    ``cond`` (optional, (B,) long) names a component per sample: the denoiser then answers
    E[x0 | x_t, k] (the class-conditional oracle); the value K (or None) means unconditional.
    Samples of any shape are flattened to D = gmm.dim dimensions.
    """

    def __init__(self, gmm: GaussianMixture, process: GaussianProcess):
        self.gmm, self.process = gmm, process
        self.calls = 0  # network evaluations, for NFE accounting in tests

    def __call__(self, xt: Tensor, t: Tensor, cond: Tensor | None = None) -> Prediction:
        self.calls += 1
        shape, dtype = xt.shape, xt.dtype
        x = xt.reshape(shape[0], -1).to(torch.float64)
        t = torch.as_tensor(t, dtype=torch.float64).expand(shape[0])
        a, s = self.process.alpha_sigma(t)
        alpha, sigma = bcast(a, x), bcast(s, x)
        g = self.gmm
        var0 = g.stds**2                                   # (K, D)
        var_t = alpha[:, None] ** 2 * var0 + sigma[:, None] ** 2  # (B, K, D)
        diff = x[:, None, :] - alpha[:, None] * g.means      # (B, K, D)
        log_r = torch.log(g.weights) - 0.5 * ((diff**2 / var_t) + torch.log(2 * math.pi * var_t)).sum(-1)
        if cond is not None:
            k = torch.as_tensor(cond, dtype=torch.long, device=log_r.device)
            fixed = k < g.num_components
            onehot = torch.full_like(log_r, -math.inf)
            onehot[fixed, k[fixed]] = 0.0
            log_r = torch.where(fixed[:, None], onehot, log_r)
        r = torch.softmax(log_r, dim=1)                      # (B, K)
        post_mean = g.means + alpha[:, None] * var0 / var_t * diff  # (B, K, D)
        x0 = (r[..., None] * post_mean).sum(1)
        eps = (x - alpha * x0) / sigma
        return Prediction(x0.to(dtype).reshape(shape), eps.to(dtype).reshape(shape))

    def log_prob_t(self, x: Tensor, t: float) -> Tensor:
        """Exact log q_t(x) of the noisy marginal at level t."""
        a, s = self.process.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
        return self.gmm.noised(float(a), float(s)).log_prob(x.reshape(x.shape[0], -1))


class OracleClassifier:
    """The exact p(y = k | x_t) for GaussianMixture data whose classes are its components.

    Bayes' rule under the noised mixture: log p(k | x_t) = log pi_k + log N(x_t; alpha mu_k,
    alpha^2 s_k^2 + sigma^2) - log sum_j (same for j), i.e. the responsibilities of
    ``gmm.noised(alpha, sigma)``, at a per-sample level t. Differentiable in x_t by autograd, so it
    plugs into ``undiffuse.guidance.ClassifierGuidance`` with the same ``log_prob`` interface as
    ``undiffuse.classifier.TimeClassifier``. Computed in float64; returned in the dtype of x_t.
    """

    def __init__(self, gmm: GaussianMixture, process: GaussianProcess):
        self.gmm, self.process = gmm, process

    def log_probs(self, xt: Tensor, t: Tensor | float) -> Tensor:
        """log p(k | x_t) for every component k: (B, K)."""
        b = xt.shape[0]
        x = xt.reshape(b, -1).to(torch.float64)
        a, s = self.process.alpha_sigma(torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(b))
        g = self.gmm
        var_t = a[:, None, None] ** 2 * g.stds**2 + s[:, None, None] ** 2   # (B, K, D)
        diff = x[:, None, :] - a[:, None, None] * g.means                   # (B, K, D)
        joint = torch.log(g.weights) - 0.5 * ((diff**2 / var_t) + torch.log(2 * math.pi * var_t)).sum(-1)
        return torch.log_softmax(joint, dim=1).to(xt.dtype)

    def log_prob(self, xt: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        """log p(y | x_t): (B,)."""
        return self.log_probs(xt, t).gather(1, torch.as_tensor(y, dtype=torch.long).reshape(-1, 1))[:, 0]
