"""Noise-conditional classifiers p_phi(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021).

Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 4, Algorithms 1-2)
needs grad_{x_t} log p_phi(y | x_t) at every noise level, so the classifier is trained on noisy
images x_t = alpha x0 + sigma eps, t drawn as for the diffusion loss, and told t. Its architecture
is the encoder half of the U-Net (ADM's ``EncoderUNetModel``): the same residual blocks conditioned
on the time embedding, then global average pooling and a linear head.

A run directory keeps its classifier in ``RUN/classifier/`` (``model.safetensors`` and
``classifier.json``); ``undiffuse train-classifier --run RUN`` writes it and
``undiffuse.guidance.ClassifierGuidance`` uses it.
"""
from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from .checkpoint import atomic_write, read_json, write_json
from .data import TensorData, load_dataset
from .nets.embeddings import TimeEmbedding, batch_noise_labels
from .nets.unet import Downsample, UNetBlock, group_norm, zero_init
from .cold import is_cold
from .processes.gaussian import GaussianProcess, bcast, make_process

__all__ = ["NoisyClassifier", "TimeClassifier", "train_classifier", "save_classifier", "load_classifier",
           "train_run_classifier", "default_net_config", "accuracy_by_level", "format_accuracy", "add_cli",
           "cmd_train_classifier", "EVAL_TS"]

#: Bumped when the file layout or the architecture changes, so stale classifiers are refused.
CLASSIFIER_VERSION = "v1"
#: Noise levels t at which held-out accuracy is reported.
EVAL_TS = (0.1, 0.3, 0.5, 0.7, 0.9)


class NoisyClassifier(nn.Module):
    """Encoder half of the ADM U-Net: ``clf(x_in, noise_label) -> logits (B, num_classes)``.

    conv_in, ``num_blocks`` UNetBlocks per level with stride-2 downsampling between levels, a
    middle Res-Attn block, then GroupNorm-SiLU, global average pooling and a zero-initialised
    linear head (ADM's ``pool="adaptive"``; zero init starts from uniform class probabilities).
    Images (B, C, H, W) only, with H and W divisible by ``2 ** (len(channel_mult) - 1)``; flat
    toy vectors are not supported. GroupNorm (never BatchNorm) keeps samples independent, so the
    gradient of a batch's summed log-probability is each sample's own gradient.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 32, channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 2), num_blocks: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size, channels=channels,
                           channel_mult=list(channel_mult), num_blocks=num_blocks, num_classes=num_classes)
        self.num_levels, self.num_classes = len(channel_mult), num_classes
        emb_dim = 4 * channels
        self.time_emb = TimeEmbedding(channels, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        cin = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_blocks):
                self.blocks.append(UNetBlock(cin, channels * mult, emb_dim))
                cin = channels * mult
            if level < self.num_levels - 1:
                self.blocks.append(Downsample(cin))
        self.mid = UNetBlock(cin, cin, emb_dim, attention=True)
        # Groups of >= 16 channels, as ADM's 32 groups of a 512-wide net: with one channel per group
        # (what 32 groups means for a narrow net) each map is standardised over space, and the global
        # average that follows would lose the very per-channel means the head classifies on.
        self.norm_out = group_norm(cin, max(1, min(32, cin // 16)))
        self.head = zero_init(nn.Linear(cin, num_classes))

    def forward(self, x: Tensor, noise_label: Tensor) -> Tensor:
        factor = 2 ** (self.num_levels - 1)
        if x.ndim != 4 or x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"NoisyClassifier takes images (B, C, H, W) with H, W divisible by {factor}, "
                             f"got shape {tuple(x.shape)}")
        emb = F.silu(self.time_emb(batch_noise_labels(noise_label, x.shape[0], x.device)))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, UNetBlock) else block(h)
        h = self.mid(h, emb)
        return self.head(F.silu(self.norm_out(h)).mean(dim=(-2, -1)))


class TimeClassifier(nn.Module):
    """A classifier net with the ``Denoiser`` input convention: ``log p(y | x_t)`` at level t.

    The net sees ``c_in * x_t`` with ``c_in = 1 / sqrt(alpha^2 + sigma^2)`` (unit variance for any
    process, 1 for VP) and ``process.noise_label(t)``, exactly as ``Denoiser`` feeds its net. The
    net runs in its own dtype; outputs come back in the dtype of ``xt`` (float64 in the oracle tests),
    and autograd flows through the casts, so guidance gets grad_{x_t} in the dtype of x_t.
    """

    def __init__(self, net: NoisyClassifier, process: GaussianProcess) -> None:
        super().__init__()
        self.net, self.process = net, process
        self.info: dict = {}

    def forward(self, xt: Tensor, t: Tensor | float) -> Tensor:
        """Class logits (B, num_classes) of x_t at level t (a scalar or (B,) float64)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=xt.device).expand(xt.shape[0])
        a, s = self.process.alpha_sigma(t)
        c_in = bcast((a**2 + s**2).rsqrt(), xt)
        dtype = next(self.net.parameters()).dtype
        return self.net((c_in * xt).to(dtype), self.process.noise_label(t).to(torch.float32)).to(xt.dtype)

    def log_probs(self, xt: Tensor, t: Tensor | float) -> Tensor:
        """log p_phi(k | x_t) for every class k: (B, num_classes)."""
        return torch.log_softmax(self(xt, t), dim=1)

    def log_prob(self, xt: Tensor, t: Tensor | float, y: Tensor) -> Tensor:
        """log p_phi(y | x_t): (B,), the log-softmax picked at each sample's label."""
        return self.log_probs(xt, t).gather(1, y.long().reshape(-1, 1).to(xt.device))[:, 0]


def default_net_config(data: TensorData) -> dict:
    """A CPU-sized classifier: three levels (32 -> 8) for MNIST, two for 8x8 digits.

    Width grows where the maps are small, as in the mnist-demo U-Net: 16-32-64 channels at 32-16-8
    pixels costs 0.11 s per batch of 64 on one CPU thread, 32-64-64 costs 0.28 s.
    """
    c, size = data.x.shape[1], data.x.shape[-1]
    mult = [1, 2, 4] if size >= 16 and size % 4 == 0 else [1, 2] if size % 2 == 0 else [1]
    return dict(in_channels=c, image_size=size, channels=16, channel_mult=mult, num_blocks=1,
                num_classes=data.num_classes)


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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = TimeClassifier(NoisyClassifier(**config), process).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(clf.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 10)

    def lr_factor(k: int) -> float:  # linear warm-up, then cosine decay to 0 at ``steps``
        decay = min(1.0, max(0, k - warmup) / max(1, steps - warmup))
        return min((k + 1) / warmup, 0.5 * (1 + math.cos(math.pi * decay)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses: list[float] = []
    clf.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        idx = torch.randint(len(train), (batch_size,), generator=gen)
        x0, y = train.x[idx], train.labels[idx]
        t = process.sample_t(batch_size, generator=gen)
        xt = process.corrupt(x0, t, torch.randn(x0.shape, generator=gen))
        loss = F.cross_entropy(clf(xt.to(device), t.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(clf.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    clf.eval()
    tail = losses[-min(50, len(losses)):]
    clf.info = {"dataset": data.name, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "weight_decay": weight_decay, "num_train": len(train), "num_heldout": len(held),
                "final_loss": sum(tail) / max(1, len(tail)), "process": process.config(),
                "accuracy_by_t": accuracy_by_level(clf, held, seed=seed + 1),
                "sigma_over_alpha_by_t": {str(t): float(process.sigma(t) / process.alpha(t)) for t in EVAL_TS},
                "seconds": time.perf_counter() - start}
    return clf


def save_classifier(clf: TimeClassifier, info: dict | None, directory: str | Path) -> Path:
    """Write ``model.safetensors`` then ``classifier.json`` (config, process, info) into ``directory``.

    The JSON is written last, so its presence marks a complete classifier. Never pickled.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in clf.net.state_dict().items()}
    atomic_write(d / "model.safetensors", lambda tmp: save_file(state, tmp))
    write_json(d / "classifier.json", {"version": CLASSIFIER_VERSION, "config": clf.net.config,
                                       "process": clf.process.config(), "info": info or clf.info})
    return d


def load_classifier(directory: str | Path, process: GaussianProcess | None = None) -> TimeClassifier:
    """Load a saved classifier in eval mode with frozen weights (guidance differentiates only x_t).

    ``process`` defaults to the one it was trained with; another one is refused, because the
    classifier has only seen that process's noise labels and noise levels.
    """
    d = Path(directory)
    meta = read_json(d / "classifier.json")
    if meta.get("version") != CLASSIFIER_VERSION:
        raise ValueError(f"{d}: classifier version {meta.get('version')!r}, expected {CLASSIFIER_VERSION!r}; "
                         "retrain it")
    if process is None:
        process = make_process(meta["process"])
    elif process.config() != meta["process"]:
        raise ValueError(f"{d}: classifier trained on process {meta['process']}, not {process.config()}; "
                         "retrain it for this process")
    net = NoisyClassifier(**meta["config"])
    net.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    clf = TimeClassifier(net, process).eval().requires_grad_(False)
    clf.info = meta.get("info", {})
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


def format_accuracy(info: dict) -> str:
    """The held-out accuracy table: one line per noise level."""
    lines = ["     t  sigma/alpha  held-out accuracy"]
    for t, acc in info["accuracy_by_t"].items():
        lines.append(f"{float(t):6.2f}  {info['sigma_over_alpha_by_t'][t]:11.3f}  {acc:17.3f}")
    return "\n".join(lines)


def add_cli(subparsers) -> None:
    """Add ``train-classifier`` to an ``argparse`` sub-parser set (``cli.main``'s)."""
    import argparse

    from .cli_flags import DeprecatedAlias

    p = subparsers.add_parser(
        "train-classifier", help="train a noisy classifier for classifier guidance",
        description="Train a noise-conditional classifier p(y | x_t, t) on the data and forward process of a "
                    "run (Dhariwal & Nichol 2021) and save it in RUN/classifier/, where classifier guidance "
                    "finds it. Prints held-out accuracy by noise level.")
    p.add_argument("--run", required=True, help="run directory written by `undiffuse train` (labelled images)")
    p.add_argument("--max-train-steps", type=int, default=2000,
                   help="number of optimisation steps (MNIST 32x32: about 0.12 s each on one CPU thread)")
    p.add_argument("--steps", dest="max_train_steps", type=int, default=argparse.SUPPRESS,
                   action=DeprecatedAlias, new="--max-train-steps",
                   help="deprecated spelling of --max-train-steps, removed in the next release")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, batches, levels and noise")


def cmd_train_classifier(args) -> int:
    path, info = train_run_classifier(args.run, steps=args.max_train_steps, batch_size=args.batch_size,
                                      lr=args.lr, seed=args.seed)
    print(format_accuracy(info))
    print(f"trained {info['steps']} steps in {info['seconds']:.0f} s; classifier: {path}")
    return 0
