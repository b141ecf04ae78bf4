"""The KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, sec. 3 and app. G).

A convolutional encoder maps an image (C, H, W) to the mean and log-variance of a diagonal Gaussian
over latents (latent_channels, H / f, W / f), f = 2 ** (len(block_out_channels) - 1); a mirrored
decoder maps a latent back to the image. Training (``objective.py``) minimises a per-pixel L1 or L2
reconstruction error plus a small weight times KL(q(z | x) || N(0, I)).

Interop: the module tree, parameter names and arithmetic are those of diffusers' ``AutoencoderKL``
(0.2x-0.4x), written here without importing diffusers, so that

    diffusers.AutoencoderKL(**ours.config).load_state_dict(ours.state_dict())

works and gives the same encodings and decodings (``tests/test_latent_autoencoder.py``). The
conventions this pins down: ResNet blocks ``norm1, conv1, norm2, conv2`` (+ a 1x1 ``conv_shortcut``
when the width changes), GroupNorm eps 1e-6, SiLU; downsampling by a stride-2 3x3 convolution after
padding one zero row and column at the bottom and right (diffusers' ``downsample_padding=0``);
upsampling by nearest-neighbour doubling then a 3x3 convolution; the decoder's up blocks hold
``layers_per_block + 1`` ResNets; the mid block is ResNet, single-head self-attention (optional:
``mid_block_add_attention``), ResNet; 1x1 ``quant_conv`` and ``post_quant_conv`` around the latent;
the log-variance clamped to [-30, 20].
"""
from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"
EPS = 1e-6  # GroupNorm epsilon everywhere, as in diffusers' VAE
#: diffusers config keys we accept only at the value our model implements (what they would change).
FIXED_KEYS: dict[str, Any] = {"act_fn": "silu", "shift_factor": None, "latents_mean": None, "latents_std": None,
                              "use_quant_conv": True, "use_post_quant_conv": True}
#: diffusers config keys that do not change the maths (dtype handling; "_..." keys are bookkeeping).
IGNORED_KEYS = {"force_upcast"}

#: Small autoencoders for the CPU: downsampling factor 4 (16x16x3 latents of a 64x64 image) and 8
#: (8x8x4). Narrow at full resolution, where a 64x64 image costs the most: [16, 32, 64] trains at
#: 32 images/s on one Zen 4 core (bf16), [32, 64, 64] at 12 (docs/latent.md).
AUTOENCODER_PRESETS: dict[str, dict] = {
    "kl-f4": dict(block_out_channels=[16, 32, 64], layers_per_block=1, latent_channels=3, norm_num_groups=8),
    "kl-f8": dict(block_out_channels=[16, 32, 64, 64], layers_per_block=1, latent_channels=4, norm_num_groups=8),
}


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))), per image."""

    def __init__(self, moments: Tensor):
        self.mean, logvar = moments.chunk(2, dim=1)
        # diffusers clamps too: exp(-30) .. exp(20) keeps std and the KL finite in float32.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """z = mean + std * eps, eps ~ N(0, I) from ``generator`` (drawn on the CPU: the same z on any
        device) or given as ``noise``."""
        if noise is None:
            noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per image (B,), summed over latent dimensions, in closed form:
        0.5 * sum(mean^2 + var - 1 - logvar)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, conv, GroupNorm, SiLU, conv, plus the input (1x1-projected when widths differ)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=EPS)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=EPS)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class Downsample(nn.Module):
    """Halve H and W: pad one zero row/column at the bottom/right, then a stride-2 3x3 conv (no padding)."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Double H and W by nearest neighbour, then a 3x3 conv."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SelfAttention(nn.Module):
    """Single-head self-attention over the H*W positions with a residual connection (diffusers'
    ``Attention`` with ``heads=1``: ``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out.0``)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, c, eps=EPS)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c), nn.Dropout(0.0)])  # index 0 holds the weights

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C): one head of width C
        out = self.to_out[1](self.to_out[0](out))
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    """ResNet, (attention,) ResNet at the lowest resolution."""

    def __init__(self, c: int, groups: int, attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, c, groups), ResnetBlock(c, c, groups)])
        self.attentions = nn.ModuleList([SelfAttention(c, groups)] if attention else [])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        if len(self.attentions):
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Block(nn.Module):
    """``n`` ResNets then an optional resampler: diffusers' DownEncoderBlock2D / UpDecoderBlock2D."""

    def __init__(self, c_in: int, c_out: int, n: int, groups: int, resample: type[nn.Module] | None, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(n)])
        samplers = nn.ModuleList([resample(c_out)] if resample is not None else [])
        # Registered under diffusers' name for each direction (state_dict keys).
        setattr(self, "upsamplers" if up else "downsamplers", samplers)
        self._samplers = "upsamplers" if up else "downsamplers"

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for sampler in getattr(self, self._samplers):
            x = sampler(x)
        return x


class Encoder(nn.Module):
    """Image -> 2 * latent_channels moments (mean and log-variance) at 1/f resolution."""

    def __init__(self, c_in: int, widths: list[int], layers: int, c_latent: int, groups: int, attention: bool):
        super().__init__()
        self.conv_in = nn.Conv2d(c_in, widths[0], 3, padding=1)
        last = len(widths) - 1
        self.down_blocks = nn.ModuleList([
            Block(widths[max(i - 1, 0)], w, layers, groups, Downsample if i < last else None, up=False)
            for i, w in enumerate(widths)])
        self.mid_block = MidBlock(widths[-1], groups, attention)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=EPS)
        self.conv_out = nn.Conv2d(widths[-1], 2 * c_latent, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    """Latent -> image, the encoder's widths in reverse, ``layers + 1`` ResNets per level."""

    def __init__(self, c_latent: int, widths: list[int], layers: int, c_out: int, groups: int, attention: bool):
        super().__init__()
        rev = widths[::-1]
        self.conv_in = nn.Conv2d(c_latent, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], groups, attention)
        last = len(rev) - 1
        self.up_blocks = nn.ModuleList([
            Block(rev[max(i - 1, 0)], w, layers + 1, groups, Upsample if i < last else None, up=True)
            for i, w in enumerate(rev)])
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=EPS)
        self.conv_out = nn.Conv2d(widths[0], c_out, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class AutoencoderKL(nn.Module):
    """The KL autoencoder (see the module docstring). Arguments are diffusers' config keys;
    ``config`` gives them back (with the block types), ``from_config`` builds from such a dict."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3, down_block_types: list[str] | None = None,
                 up_block_types: list[str] | None = None, block_out_channels: list[int] = (64,),
                 layers_per_block: int = 1, latent_channels: int = 4, norm_num_groups: int = 32,
                 sample_size: int = 32, scaling_factor: float = 0.18215, mid_block_add_attention: bool = True,
                 act_fn: str = "silu"):
        super().__init__()
        if act_fn != "silu":
            raise ValueError(f"autoencoder config: act_fn={act_fn!r} is not supported; this model implements "
                             "diffusers' AutoencoderKL with act_fn='silu'")
        widths = [int(w) for w in block_out_channels]
        _check_architecture(widths, down_block_types, up_block_types, norm_num_groups, layers_per_block,
                            in_channels, out_channels, latent_channels)
        self.encoder = Encoder(in_channels, widths, layers_per_block, latent_channels, norm_num_groups,
                               mid_block_add_attention)
        self.decoder = Decoder(latent_channels, widths, layers_per_block, out_channels, norm_num_groups,
                               mid_block_add_attention)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.config: dict[str, Any] = dict(
            in_channels=in_channels, out_channels=out_channels, down_block_types=[DOWN_BLOCK] * len(widths),
            up_block_types=[UP_BLOCK] * len(widths), block_out_channels=widths, layers_per_block=layers_per_block,
            latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
            scaling_factor=float(scaling_factor), mid_block_add_attention=bool(mid_block_add_attention),
            act_fn="silu")

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "AutoencoderKL":
        """Build from ``config`` (ours, or a diffusers ``AutoencoderKL`` config.json); a key that would
        change the maths to something this model does not implement is refused, naming it."""
        config = dict(config)
        config.pop("type", None)  # net_config's tag (run directories)
        for key, value in FIXED_KEYS.items():
            given = config.pop(key, value)
            if given != value and not (isinstance(given, (list, tuple)) and list(given) == value):
                raise ValueError(f"autoencoder config: {key}={given!r} is not supported; this model implements "
                                 f"diffusers' AutoencoderKL with {key}={value!r}")
        config = {k: v for k, v in config.items() if k not in IGNORED_KEYS and not k.startswith("_")}
        known = set(inspect.signature(cls).parameters)
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"autoencoder config: unknown keys {unknown}; known: {sorted(known | set(FIXED_KEYS))}")
        return cls(**config)

    @property
    def net(self) -> "AutoencoderKL":
        """The Trainer reads a model's network as ``model.net``: the autoencoder is its own network."""
        return self

    @property
    def factor(self) -> int:
        """Downsampling factor f: a (C, H, W) image has (latent_channels, H / f, W / f) latents."""
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    @property
    def scaling_factor(self) -> float:
        return self.config["scaling_factor"]

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        c, h, w = image_shape
        if c != self.config["in_channels"]:
            raise ValueError(f"this autoencoder takes {self.config['in_channels']}-channel images, not {c}-channel "
                             f"images {tuple(image_shape)}")
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder's downsampling factor "
                             f"{self.factor}; resize the images (--image-size) to a multiple of {self.factor}")
        return self.config["latent_channels"], h // self.factor, w // self.factor

    def encode(self, x: Tensor) -> DiagonalGaussian:
        self.latent_shape(tuple(x.shape[1:]))
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct ``x`` through a posterior sample (``noise`` given: mean + std * noise; else the
        mean); returns (reconstruction, mean, logvar), plain tensors so that DDP can wrap it."""
        q = self.encode(x)
        z = q.mode() if noise is None else q.sample(noise=noise)
        return self.decode(z), q.mean, q.logvar


def _check_architecture(widths: list[int], down: list[str] | None, up: list[str] | None, groups: int,
                        layers: int, *channels: int) -> None:
    """Refuse a configuration the blocks cannot build, with the reason (before torch's own error)."""
    if not widths or min(widths) < 1 or min(channels) < 1 or layers < 1:
        raise ValueError("autoencoder config: block_out_channels, layers_per_block and the channel counts must "
                         f"be positive (got widths {widths}, layers {layers}, channels {channels})")
    for name, types, allowed in (("down_block_types", down, DOWN_BLOCK), ("up_block_types", up, UP_BLOCK)):
        if types is not None and (len(types) != len(widths) or set(types) != {allowed}):
            raise ValueError(f"autoencoder config: {name} must be {len(widths)} x {allowed!r} (one per entry "
                             f"of block_out_channels), got {list(types)}")
    bad = [w for w in widths if w % groups]
    if bad:
        raise ValueError(f"autoencoder config: norm_num_groups {groups} must divide every block width; "
                         f"{bad} are not multiples of it (use e.g. norm_num_groups {math.gcd(*widths)})")
