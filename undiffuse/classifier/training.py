"""Training the noisy classifier on x_t = alpha x0 + sigma eps, and its held-out accuracy by noise level.

Classifier guidance (Dhariwal & Nichol 2021, sec. 4, Algorithms 1-2) needs grad_{x_t} log p_phi(y | x_t)
at every noise level, so the classifier is trained on noisy images, t drawn as for the diffusion
loss, and told t. ``train_run_classifier`` trains one on a run's data and process into
``RUN/classifier/``, where ``undiffuse.guidance.ClassifierGuidance`` finds it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..checkpoint import read_json
from ..data import TensorData, load_dataset
from ..fitting import fit, random_batches, seeded_init
from ..cold import is_cold
from ..processes.gaussian import GaussianProcess, make_process
from .model import NoisyClassifier, TimeClassifier, default_net_config, save_classifier

__all__ = ["EVAL_TS", "accuracy_by_level", "train_classifier", "train_run_classifier"]

#: Noise levels t at which held-out accuracy is reported.
EVAL_TS = (0.1, 0.3, 0.5, 0.7, 0.9)


@torch.no_grad()
def accuracy_by_level(clf: TimeClassifier, data: TensorData, ts: Sequence[float] = EVAL_TS, seed: int = 0,
                      batch_size: int = 500) -> dict[str, float]:
    """Accuracy on ``data`` noised to each level t (fixed seeded noise), keyed by ``str(t)``."""
    was_training = clf.training
    clf.eval()
    gen, out = torch.Generator().manual_seed(seed), {}
    device = next(clf.parameters()).device
    for t in ts:
        correct = 0
        for i in range(0, len(data), batch_size):
            x0, y = data.x[i:i + batch_size], data.labels[i:i + batch_size]
            level = torch.tensor(float(t), dtype=torch.float64)
            xt = clf.process.corrupt(x0, level, torch.randn(x0.shape, generator=gen))
            correct += int((clf(xt.to(device), t).argmax(1).cpu() == y).sum())
        out[str(t)] = correct / len(data)
    clf.train(was_training)
    return out


def _warmup_cosine(opt: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A 10 % linear warm-up, then cosine decay to 0 at ``steps``."""
    warmup = max(1, steps // 10)

    def lr_factor(k: int) -> float:
        decay = min(1.0, max(0, k - warmup) / max(1, steps - warmup))
        return min((k + 1) / warmup, 0.5 * (1 + math.cos(math.pi * decay)))

    return torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)


def train_classifier(data: TensorData, process: GaussianProcess, *, steps: int = 2000, batch_size: int = 64,
                     lr: float = 2e-3, seed: int = 0, net_config: dict | None = None, progress: bool = True,
                     weight_decay: float = 0.05, holdout: float = 0.1, device: str = "cpu") -> TimeClassifier:
    """Train p_phi(y | x_t, t) on noisy data (Dhariwal & Nichol 2021, sec. 4: "we train classifiers
    on noisy images x_t"), x_t = process.corrupt(x0, t, eps) with t ~ ``process.sample_t`` (uniform
    over the steps for DDPM), cross-entropy, AdamW (ADM's classifier recipe: weight decay 0.05), a
    10 % linear warm-up then cosine decay, gradient norm clipped to 1.

    A stratified ``holdout`` fraction is kept out; ``clf.info["accuracy_by_t"]`` holds held-out
    accuracy at t in ``EVAL_TS`` (chance is 1 / num_classes). Deterministic for a seed on a given
    machine: batches, levels and noise come from a seeded ``torch.Generator`` and the init runs
    under ``fork_rng``, so the global RNG is left as it was. Returns the classifier in eval mode.
    """
    if data.labels is None or data.x.ndim != 4:
        raise ValueError(f"{data.name}: classifier guidance needs labelled images (B, C, H, W)")
    start = time.perf_counter()
    train, held = data.split(holdout, seed)
    config = {**default_net_config(data), **(net_config or {})}
    clf = seeded_init(seed, lambda: TimeClassifier(NoisyClassifier(**config), process).to(device))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)

    def batch_loss(idx: Tensor) -> Tensor:  # the level and the noise are drawn after the batch
        x0, y = train.x[idx], train.labels[idx]
        t = process.sample_t(batch_size, generator=gen)
        xt = process.corrupt(x0, t, torch.randn(x0.shape, generator=gen))
        return F.cross_entropy(clf(xt.to(device), t.to(device)), y.to(device))

    batches = tqdm(random_batches(len(train), batch_size, steps, gen), total=steps, desc="classifier",
                   disable=not progress)
    losses = fit(clf, batch_loss, batches, opt, _warmup_cosine(opt, steps), clip_norm=1.0)
    tail = losses[-min(50, len(losses)):]
    clf.info = {"dataset": data.name, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "weight_decay": weight_decay, "num_train": len(train), "num_heldout": len(held),
                "final_loss": sum(tail) / max(1, len(tail)), "process": process.config(),
                "accuracy_by_t": accuracy_by_level(clf, held, seed=seed + 1),
                "sigma_over_alpha_by_t": {str(t): float(process.sigma(t) / process.alpha(t)) for t in EVAL_TS},
                "seconds": time.perf_counter() - start}
    return clf


def train_run_classifier(run_dir: str | Path, steps: int = 2000, batch_size: int = 64, lr: float = 2e-3,
                         seed: int = 0, net_config: dict | None = None, progress: bool = True) -> tuple[Path, dict]:
    """Train a classifier on the data and process of a run (``RUN/config.json``) into ``RUN/classifier``."""
    run = Path(run_dir)
    cfg = read_json(run / "config.json")
    if is_cold(cfg["process"]):
        raise ValueError(f"{run} is a cold-diffusion run ({cfg['process']['type']}): classifier guidance "
                         "steers Gaussian diffusion models only")
    tcfg = cfg["train"]
    data = load_dataset(tcfg["data"], image_size=tcfg.get("image_size"), channels=tcfg.get("channels"),
                        on_bad_image=tcfg.get("on_bad_image", "error"),
                        labels_from_subfolders=tcfg.get("labels_from_subfolders", False))
    if list(data.x.shape[1:]) != list(cfg["data"]["shape"]):
        raise ValueError(f"{run}: data now loads as {list(data.x.shape[1:])}, but the run was trained on "
                         f"{cfg['data']['shape']}")
    clf = train_classifier(data, make_process(cfg["process"]), steps=steps, batch_size=batch_size, lr=lr,
                           seed=seed, net_config=net_config, progress=progress)
    return save_classifier(clf, clf.info, run / "classifier"), clf.info
