"""Guidance as denoiser wrappers: anything that takes a denoiser and returns one fits every sampler.

``ClassifierFreeGuidance`` and ``NullCondition`` wrap Gaussian denoisers (which return a
``Prediction``) and cold restorers (which return x0_hat as a tensor) alike.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .denoiser import Prediction
from .processes.gaussian import bcast


class ClassifierFreeGuidance:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6, in the "w = 1 is conditional" form):

        eps = eps_u + w (eps_c - eps_u),

    with the conditional and unconditional passes batched into one network call. Because x0_hat
    is affine in eps_hat at fixed (x_t, t), guiding x0 is the same update.

    The condition is opaque here: class labels, or a text embedding (``undiffuse.text.TextEmbedding``,
    batched with its ``cat``). For text, ``null_cond`` is the empty caption's embedding, as GLIDE
    trains with caption dropout (Nichol et al. 2022, sec. 2.3); put a negative prompt's embedding in
    its place and the same formula guides away from that caption instead of from "anything"
    (eps_u becomes eps_neg: the negative prompt of Stable Diffusion's samplers).

    Args:
        denoiser: a conditional denoiser trained with label (caption) dropout to ``null_cond``.
        scale: w; 1 is the plain conditional model, 0 the unconditional one.
        null_cond: the "no condition": the null class index (num_classes); or a text embedding of
            one row (repeated for the batch) or of one row per sample (negative prompts).
        rescale: guidance rescale phi (Lin et al. 2023, eq. 15-16): match the guided x0's per-sample
            std to the conditional one's and blend by phi; 0 disables it.
        interval: (sigma_lo, sigma_hi): guide only where sigma/alpha lies in this range
            (Kynkäänniemi et al. 2024); elsewhere use the conditional prediction.
    """

    def __init__(self, denoiser, scale: float, null_cond, rescale: float = 0.0,
                 interval: tuple[float, float] | None = None):
        self.denoiser, self.scale, self.null_cond = denoiser, float(scale), null_cond
        self.rescale, self.interval = float(rescale), interval
        self.process = denoiser.process
        # The wrapped model's clamp, for wrappers stacked on this one (ClassifierGuidance re-clamps).
        self.clip_x0 = getattr(denoiser, "clip_x0", None)

    def __call__(self, xt: Tensor, t: Tensor, cond=None) -> Prediction | Tensor:
        if cond is None:
            raise ValueError("classifier-free guidance needs a condition (class labels or a text embedding)")
        if self.scale == 1.0:
            return self.denoiser(xt, t, cond)
        b = xt.shape[0]
        # Gaussian levels in float64; a cold run's integer severities as they are.
        cold = isinstance(t, Tensor) and not t.is_floating_point()
        t_b = (t if cold else torch.as_tensor(t, dtype=torch.float64)).expand(b)
        both = self.denoiser(torch.cat([xt, xt]), torch.cat([t_b, t_b]), self._with_null(cond, b))
        if isinstance(both, Tensor):  # a cold restorer's x0_hat: guide it directly
            x0_c, x0_u = both.chunk(2)
            return x0_u + self.scale * (x0_c - x0_u)
        x0_c, x0_u = both.x0[:b], both.x0[b:]
        x0 = x0_u + self.scale * (x0_c - x0_u)
        a, s = self.process.alpha_sigma(t_b)
        if self.rescale > 0:
            dims = tuple(range(1, xt.ndim))
            ratio = x0_c.std(dim=dims, keepdim=True) / x0.std(dim=dims, keepdim=True).clamp_min(1e-8)
            x0 = self.rescale * (x0 * ratio) + (1 - self.rescale) * x0
        if self.interval is not None:
            level = s / a
            inside = (level >= self.interval[0]) & (level <= self.interval[1])
            x0 = torch.where(bcast(inside, xt).bool(), x0, x0_c)  # bcast casts to x.dtype
        eps = (xt - bcast(a, xt) * x0) / bcast(s, xt)
        return Prediction(x0, eps)

    def _with_null(self, cond, b: int):
        """The conditions of one batched call: ``cond`` then the null (or negative) condition."""
        if isinstance(cond, Tensor):
            null = torch.as_tensor(self.null_cond, device=cond.device, dtype=cond.dtype).expand_as(cond)
            return torch.cat([cond, null])
        null = self.null_cond
        if isinstance(null, (int, Tensor)):
            raise ValueError("the condition is a text embedding but null_cond is a class label; pass the null "
                             "caption's embedding (encoder.encode([undiffuse.text.NULL_CAPTION]))")
        if len(null) != b:
            if len(null) != 1:
                raise ValueError(f"null_cond has {len(null)} rows for a batch of {b}: give one row (repeated) "
                                 "or one per sample")
            null = null.repeat(b)
        return type(cond).cat([cond, null.to(cond.tokens.device)])


class NullCondition:
    """A conditional model asked for its null condition whatever the given one (guidance w = 0): the
    null class, or a text embedding (the empty caption, or a negative prompt)."""

    def __init__(self, denoiser, null):
        self.denoiser, self.null, self.process = denoiser, null, denoiser.process
        self.clip_x0 = getattr(denoiser, "clip_x0", None)

    def __call__(self, xt: Tensor, t: Tensor, cond=None):
        b = xt.shape[0]
        if isinstance(self.null, int):
            return self.denoiser(xt, t, torch.full((b,), self.null, dtype=torch.long, device=xt.device))
        return self.denoiser(xt, t, self.null if len(self.null) == b else self.null.repeat(b))


class ClassifierGuidance:
    """Classifier guidance (Dhariwal & Nichol 2021, Algorithm 2 and eq. 14) as a denoiser wrapper:

        eps' = eps - scale * sigma(t) * grad_{x_t} log p_phi(y | x_t, t),   x0' = (x_t - sigma eps') / alpha,

    i.e. in the score view score' = score + scale * grad log p(y | x_t), since score = -eps / sigma.
    With the exact classifier and scale 1 this is Bayes' rule, grad log p(x|y) = grad log p(x) +
    grad log p(y|x): the unconditional model becomes the conditional one. The same shifted eps
    drives ancestral (DDPM) sampling too; any learned variance output is passed through unchanged
    (Algorithm 1 shifts only the mean).

    Unlike ADM's ``condition_score``, x0' is clipped again when the wrapped denoiser clips (and eps made
    consistent, as ``Denoiser`` does). The shift x0' - x0 = s sigma^2 / alpha * grad is divided by
    alpha, which is 4.9e-5 at t = 1 of the cosine DDPM where "trailing" sampling starts (ADM's respaced
    DDIM never visits t = T). The exact classifier's gradient is O(alpha) there, but a learned one's
    is not: on the MNIST demo one unclipped first step sends x0' to +-400 and ruins every sample.

    The gradient is taken under ``torch.enable_grad()`` on a detached copy of x_t, so it works when
    the sampler runs under ``torch.no_grad()`` (all of them do), but not under
    ``torch.inference_mode()``, which cannot record a graph: that raises a RuntimeError. The classifier
    must treat batch samples independently (eval mode, no BatchNorm statistics), because one backward
    pass of the summed log-probabilities gives every sample's gradient.

    Args:
        denoiser: any denoiser (a ``Denoiser``, the oracle, a ``ClassifierFreeGuidance``, ...).
        classifier: anything with ``log_prob(xt, t, y) -> (B,)``: ``undiffuse.classifier.TimeClassifier``
            or ``undiffuse.testing.oracle.OracleClassifier``.
        scale: the guidance scale s; 0 is the wrapped denoiser, 1 the Bayes posterior.
        pass_cond: False (default): call the wrapped denoiser with ``cond=None`` (an unconditional
            model, or the null class of a label-dropout model); True: pass it the labels too (a
            conditional model, as ADM combines both, or a classifier-free-guided one).
        clip_x0: clamp the guided x0 to [-clip_x0, clip_x0]; "auto" (default) takes the wrapped
            denoiser's ``clip_x0`` attribute (None when it has none, e.g. the oracle); None disables it.
    """

    def __init__(self, denoiser, classifier, scale: float, pass_cond: bool = False,
                 clip_x0: float | None | str = "auto"):
        self.denoiser, self.classifier, self.scale = denoiser, classifier, float(scale)
        self.pass_cond = pass_cond
        self.clip_x0 = getattr(denoiser, "clip_x0", None) if clip_x0 == "auto" else clip_x0
        self.process = denoiser.process

    def classifier_grad(self, xt: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """grad_{x_t} log p_phi(cond | x_t, t), shaped and typed like xt."""
        if torch.is_inference_mode_enabled():
            raise RuntimeError("classifier guidance differentiates the classifier, which torch.inference_mode() "
                               "forbids; sample under torch.no_grad() instead")
        with torch.enable_grad():
            # clone: xt may be an inference tensor or a view the sampler updates in place.
            x = xt.detach().clone().requires_grad_(True)
            log_p = self.classifier.log_prob(x, t, cond)
            (grad,) = torch.autograd.grad(log_p.sum(), x)
        return grad

    def __call__(self, xt: Tensor, t: Tensor, cond: Tensor | None = None) -> Prediction:
        if cond is None:
            raise ValueError("classifier guidance needs a condition: the class labels (B,) to steer towards")
        cond = torch.as_tensor(cond, dtype=torch.long, device=xt.device).expand(xt.shape[0])
        pred = self.denoiser(xt, t, cond if self.pass_cond else None)
        if self.scale == 0.0:
            return pred
        t_b = torch.as_tensor(t, dtype=torch.float64, device=xt.device).expand(xt.shape[0])
        a, s = self.process.alpha_sigma(t_b)
        alpha, sigma = bcast(a, xt), bcast(s, xt)
        eps = pred.eps - self.scale * sigma * self.classifier_grad(xt, t_b, cond)
        x0 = (xt - sigma * eps) / alpha
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = (xt - alpha * x0) / sigma
        return Prediction(x0, eps, pred.var_interp)
