"""Class statistics of generated samples: which classes a classifier sees, and how far from the data.

A generator that drops modes shows it here before it shows in FID: fewer classes present, and a
class histogram that diverges from the data's (the "number of modes" and "KL of the class
distribution" measures of mode collapse, e.g. Srivastava et al. 2017, VEEGAN, sec. 4).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["class_statistics", "class_agreement"]

#: A class counts as "well present" when it holds at least this fraction of its uniform share N / K.
PRESENT_FRACTION = 0.1
#: Weight of the uniform mixture used to smooth both histograms before the KL divergence.
SMOOTHING = 1e-3


def _histogram(labels: Tensor, num_classes: int) -> Tensor:
    """Counts per class of integer labels in ``[0, num_classes)``."""
    labels = torch.as_tensor(labels).reshape(-1).long().cpu()
    if labels.numel() == 0:
        raise ValueError("need at least one label")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return torch.bincount(labels, minlength=num_classes)


def _smooth(counts: Tensor, eps: float) -> Tensor:
    """Class frequencies mixed with the uniform distribution: ``(1 - eps) p + eps / K``, in float64.

    Mixing (rather than adding pseudo-counts) keeps proportional histograms exactly equal after
    smoothing, so matching class frequencies give a KL of exactly 0 whatever the sample sizes, while
    every class gets mass >= eps / K and the KL stays finite (at most log(K / eps)).
    """
    p = counts.double() / counts.sum()
    return (1 - eps) * p + eps / counts.numel()


def class_statistics(
    pred_labels: Tensor,
    num_classes: int,
    data_labels: Tensor | None = None,
    smoothing: float = SMOOTHING,
) -> dict:
    """Histogram and mode-coverage statistics of predicted labels of generated samples.

    Returns a JSON-friendly dict:

    * ``histogram``: counts per class; ``frequencies``: counts / N.
    * ``num_present``: classes predicted at least once.
    * ``num_present_thresholded``: classes holding at least ``PRESENT_FRACTION`` (10 %) of the uniform
      share N / K, so a class seen in a handful of stray samples is not counted as generated.
    * ``kl``: ``KL(p_gen || p_ref)`` in nats, the divergence of the generated class distribution from
      the reference: the class frequencies of ``data_labels`` when given, else uniform. Both are
      smoothed by mixing with the uniform distribution (weight ``smoothing``, see ``_smooth``).
    * ``reference``: "data" or "uniform".
    """
    counts = _histogram(pred_labels, num_classes)
    n = int(counts.sum())
    threshold = PRESENT_FRACTION * n / num_classes
    ref_counts = _histogram(data_labels, num_classes) if data_labels is not None else torch.ones(num_classes)
    p, q = _smooth(counts, smoothing), _smooth(ref_counts, smoothing)
    return {
        "histogram": counts.tolist(),
        "frequencies": (counts.double() / n).tolist(),
        "num_samples": n,
        "num_classes": num_classes,
        "num_present": int((counts >= 1).sum()),
        "num_present_thresholded": int((counts >= threshold).sum()),
        "present_threshold": threshold,
        "kl": float(torch.xlogy(p, p / q).sum()),  # xlogy: 0 log 0 = 0 when smoothing = 0
        "reference": "data" if data_labels is not None else "uniform",
    }


def class_agreement(predicted: Tensor, true: Tensor) -> float:
    """The share of restored images that a classifier assigns to the class of the image they came
    from: ``mean(predicted == true)``. Fidelity, where FID-style scores realism: a restorer that
    draws *some* sharp digit scores well in FID-style and only this tells whether it is *this* one.
    ``predicted`` comes from a classifier (``metrics.predict_labels``) on the restorations."""
    predicted, true = torch.as_tensor(predicted).reshape(-1), torch.as_tensor(true).reshape(-1)
    if predicted.shape != true.shape or predicted.numel() == 0:
        raise ValueError(f"need as many predicted as true labels (at least one), got {predicted.numel()} "
                         f"and {true.numel()}")
    return (predicted.long().cpu() == true.long().cpu()).double().mean().item()
