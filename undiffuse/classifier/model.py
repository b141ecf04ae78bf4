"""The noisy classifier p_phi(y | x_t, t) of classifier guidance, and its files.

Its architecture is the encoder half of the U-Net (ADM's ``EncoderUNetModel``, Dhariwal & Nichol
2021): the same residual blocks conditioned on the time embedding, then global average pooling and a
linear head. ``TimeClassifier`` wraps it with a forward process, so it is called like ``Denoiser``
is. A classifier is stored as ``model.safetensors`` and ``classifier.json`` (never pickled).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..checkpoint import atomic_write, read_json, write_json
from ..data import TensorData
from ..nets.embeddings import TimeEmbedding, batch_noise_labels
from ..nets.unet import Downsample, UNetBlock, group_norm, zero_init
from ..processes.gaussian import GaussianProcess, bcast, make_process

__all__ = ["NoisyClassifier", "TimeClassifier", "default_net_config", "save_classifier", "load_classifier",
           "CLASSIFIER_VERSION"]

#: Bumped when the file layout or the architecture changes, so stale classifiers are refused.
CLASSIFIER_VERSION = "v1"


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
