"""The DDPM / ADM U-Net for images.

The layout is DDPM's (Ho et al. 2020, appendix B; the PixelCNN++-style Wide-ResNet U-Net): a
``conv_in``, an encoder of residual blocks per resolution with self-attention at chosen
resolutions and stride-2 downsampling between them, a middle Res-Attn-Res, a decoder that
concatenates the encoder's activations (skips) and upsamples, then GroupNorm-SiLU-conv out.
Two refinements from ADM (Dhariwal & Nichol 2021) are settings: multi-head attention
(``head_dim``) and the noise embedding entering each block as a scale and shift of its second
GroupNorm (``scale_shift``, ADM's ``use_scale_shift_norm``) instead of DDPM's plain addition.

Every module works in channels_last memory format and under bf16 autocast: tensors are reshaped
(never ``view``-ed) and attention goes through ``scaled_dot_product_attention``.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionBlock, CrossAttentionBlock, group_norm, zero_init
from .embeddings import ClassEmbedding, TextConditioning, TimeEmbedding, batch_noise_labels

__all__ = ["UNet", "UNetBlock", "AttentionBlock", "CrossAttentionBlock", "Downsample", "Upsample",
           "UNET_PRESETS", "group_norm", "zero_init"]

#: What a block cross-attends to: the caption's token embeddings (B, L, D) and padding mask (B, L).
Context = tuple[Tensor, Tensor]


class UNetBlock(nn.Module):
    """Residual block conditioned on the noise embedding, optionally followed by self-attention
    and by cross-attention to a caption's tokens (``context_dim``: their width).

    GroupNorm-SiLU-conv3x3, then the embedding: ``h = norm(h) * (1 + scale) + shift`` when
    ``scale_shift`` (ADM), else ``h = norm(h + proj(emb))`` (DDPM); then SiLU-dropout-conv3x3, the
    last conv zero-initialised. A 1x1 conv matches the skip when the channel count changes.
    ``emb`` arrives already passed through SiLU, the first layer of every block's projection.
    Self-attention then cross-attention, as in latent diffusion's transformer blocks.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, *, attention: bool = False,
                 dropout: float = 0.0, scale_shift: bool = True, head_dim: int = 64,
                 num_groups: int = 32, context_dim: int | None = None, positions: bool = False) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_channels * (2 if scale_shift else 1))
        self.norm2 = group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()
        self.attn = AttentionBlock(out_channels, head_dim, num_groups) if attention else None
        # Only created when asked for: a net without text has no such parameters at all.
        if context_dim is not None:
            self.cross_attn = CrossAttentionBlock(out_channels, context_dim, head_dim, num_groups, positions)
        else:
            self.cross_attn = None

    def forward(self, x: Tensor, emb: Tensor, context: Context | None = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        params = self.emb_proj(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = params.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + params)
        h = self.skip(x) + self.conv2(self.dropout(F.silu(h)))
        if self.attn is not None:
            h = self.attn(h)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block cross-attends to text, but no context (tokens, mask) was given")
            h = self.cross_attn(h, *context)
        return h


class Downsample(nn.Module):
    """Halve the resolution: a stride-2 conv3x3, or 2x2 average pooling without a conv (DDPM)."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) if self.conv is not None else F.avg_pool2d(x, 2)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour, then a conv3x3 unless disabled (DDPM)."""

    def __init__(self, channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if with_conv else None

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class UNet(nn.Module):
    """DDPM/ADM U-Net: ``net(x, noise_label, cond=None)`` -> (B, out_channels, H, W).

    ``image_size`` fixes the resolutions at which attention happens (level ``l`` works at
    ``image_size / 2**l``); inputs of other sizes work when H and W are divisible by
    ``2 ** (len(channel_mult) - 1)``. ``out_channels`` defaults to ``in_channels``; pass twice that
    for a learned variance. ``self.config`` holds the constructor arguments so that
    ``undiffuse.nets.net_config`` can rebuild the net.

    ``cond`` is what the net was built for:

    * nothing: ``None``;
    * ``num_classes`` set: class labels (B,) in ``[0, num_classes]``, ``num_classes`` being the
      null class (also meant by None), a learned embedding added to the noise embedding (ADM);
    * ``context_dim`` set: a text embedding with ``tokens`` (B, L, context_dim), ``mask`` (B, L)
      and ``pooled`` (B, context_dim) (``undiffuse.text.TextEmbedding``; the null caption's for
      the unconditional prediction). The tokens feed cross-attention blocks at
      ``cross_attn_resolutions`` (default: where self-attention is; ignored without
      ``context_dim``) and in the middle; the pooled embedding is added to the noise embedding
      (GLIDE, Imagen). ``cross_attn_positions`` adds fixed position features to the
      cross-attention queries (``undiffuse.nets.attention.position_features``).

    ``label_scale`` and ``label_shift`` map the noise label before it is embedded: the time
    embedding sees ``label_scale * noise_label + label_shift``. undiffuse's own nets keep 1 and 0
    (the label is used as given, and nothing is computed). A net imported from diffusers was trained
    on 0-based timesteps ``n - 1`` where undiffuse's label for DDPM step ``n`` of ``N`` is
    ``1000 n / N``: it gets ``N / 1000`` and ``-1`` (``undiffuse.interop``).
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, image_size: int = 32,
                 channels: int = 128, channel_mult: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (16,), dropout: float = 0.1, num_classes: int | None = None,
                 head_dim: int = 64, num_groups: int = 32, resample_with_conv: bool = True,
                 scale_shift: bool = True, context_dim: int | None = None,
                 cross_attn_resolutions: Sequence[int] | None = None, cross_attn_positions: bool = False,
                 label_scale: float = 1.0, label_shift: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        if context_dim is not None and num_classes is not None:
            raise ValueError("a U-Net is conditioned on class labels (num_classes) or on text (context_dim), "
                             "not both; put the class in the caption instead")
        # Without text there is nothing to cross-attend to: the setting is dropped (a preset may carry it).
        if context_dim is None:
            cross_res, cross_attn_positions = None, False
        else:
            cross_res = list(attn_resolutions if cross_attn_resolutions is None else cross_attn_resolutions)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, image_size=image_size,
                           channels=channels, channel_mult=list(channel_mult), num_res_blocks=num_res_blocks,
                           attn_resolutions=list(attn_resolutions), dropout=dropout, num_classes=num_classes,
                           head_dim=head_dim, num_groups=num_groups, resample_with_conv=resample_with_conv,
                           scale_shift=scale_shift, context_dim=context_dim, cross_attn_resolutions=cross_res,
                           cross_attn_positions=cross_attn_positions, label_scale=label_scale,
                           label_shift=label_shift)
        self.label_scale, self.label_shift = float(label_scale), float(label_shift)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.image_size, self.num_classes, self.context_dim = image_size, num_classes, context_dim
        self.num_levels = len(channel_mult)
        emb_dim = 4 * channels
        block = dict(emb_dim=emb_dim, dropout=dropout, scale_shift=scale_shift, head_dim=head_dim,
                     num_groups=num_groups, positions=cross_attn_positions)

        def at(level: int) -> dict:  # what the blocks of a level attend to
            res = image_size >> level
            return dict(attention=res in attn_resolutions,
                        context_dim=context_dim if cross_res is not None and res in cross_res else None)

        self.time_emb = TimeEmbedding(channels, emb_dim)
        self.class_emb = ClassEmbedding(num_classes, emb_dim)
        self.text_cond = TextConditioning(context_dim, emb_dim) if context_dim is not None else None
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        # Encoder; skip_channels records every activation the decoder will concatenate.
        self.enc = nn.ModuleList()
        skip_channels, cin = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.enc.append(UNetBlock(cin, channels * mult, **at(level), **block))
                cin = channels * mult
                skip_channels.append(cin)
            if level < self.num_levels - 1:
                self.enc.append(Downsample(cin, resample_with_conv))
                skip_channels.append(cin)

        self.mid = nn.ModuleList([UNetBlock(cin, cin, attention=True, context_dim=context_dim, **block),
                                  UNetBlock(cin, cin, **block)])

        # Decoder: one block more per level than the encoder, to consume the downsample's skip too.
        self.dec = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                self.dec.append(UNetBlock(cin + skip_channels.pop(), channels * mult, **at(level), **block))
                cin = channels * mult
            if level > 0:
                self.dec.append(Upsample(cin, resample_with_conv))

        self.norm_out = group_norm(cin, num_groups)
        self.conv_out = zero_init(nn.Conv2d(cin, out_channels, 3, padding=1))

    def forward(self, x: Tensor, noise_label: Tensor, cond=None) -> Tensor:
        factor = 2 ** (self.num_levels - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by {factor} for this U-Net")
        class_labels, text = self._split_cond(cond)
        emb = self.time_emb(self.time_label(batch_noise_labels(noise_label, x.shape[0], x.device)))
        class_emb = self.class_emb(class_labels, x.shape[0], x.device)
        if class_emb is not None:
            emb = emb + class_emb
        context = None
        if self.text_cond is not None:
            pooled_emb, context = self.text_cond(text, x.shape[0])
            emb = emb + pooled_emb
        emb = F.silu(emb)  # every block's projection starts with SiLU: apply it once here

        h = self.conv_in(x)
        skips = [h]
        for block in self.enc:
            h = block(h, emb, context) if isinstance(block, UNetBlock) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb, context)
        for block in self.dec:
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context) if isinstance(block, UNetBlock) else block(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def time_label(self, label: Tensor) -> Tensor:
        """What the time embedding sees for a float32 noise label: the label itself unless the net
        maps it (``label_scale``, ``label_shift``); skipped at 1 and 0, so that undiffuse's own nets
        compute exactly what they did before the option existed."""
        if self.label_scale == 1.0 and self.label_shift == 0.0:
            return label
        return label * self.label_scale + self.label_shift

    def _split_cond(self, cond) -> tuple[Tensor | None, object]:
        """(class labels, text embedding) from ``cond``, refusing what this net was not built for."""
        is_text = cond is not None and not isinstance(cond, Tensor)
        if self.text_cond is None:
            if is_text:
                raise ValueError("a text embedding was given, but this U-Net was built without context_dim; "
                                 "build it with context_dim=<the text encoder's width> to condition on text")
            return cond, None
        if not is_text:
            raise ValueError(f"this U-Net is text-conditional (context_dim={self.context_dim}): cond must be a "
                             "TextEmbedding (for the unconditional prediction, the null caption's: "
                             "encoder.encode([undiffuse.text.NULL_CAPTION])), not "
                             f"{'None' if cond is None else 'class labels'}")
        return None, cond


UNET_PRESETS: dict[str, dict] = {
    # Ho et al. 2020's CIFAR-10 model (35.7M parameters): DDPM's additive noise embedding. Its
    # single-head attention is head_dim >= 256; heads of 64 cost no parameters and match ADM.
    "ddpm-cifar10": dict(in_channels=3, image_size=32, channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=2,
                         attn_resolutions=(16,), dropout=0.1, scale_shift=False),
    # Fast enough for unit tests: two levels, attention at 16x16.
    "tiny": dict(in_channels=1, image_size=32, channels=16, channel_mult=(1, 2), num_res_blocks=1,
                 attn_resolutions=(16,), dropout=0.0),
    # A first guess for the MNIST demo (images padded to 32x32).
    "mnist-small": dict(in_channels=1, image_size=32, channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                        attn_resolutions=(16,), dropout=0.0),
    # The CPU demo: width where compute is cheap (8x8), attention only there (docs/mnist_recipe.md).
    "mnist-demo": dict(in_channels=1, image_size=32, channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
                       attn_resolutions=(8,), dropout=0.0),
    # The demo's layout for captions: cross-attention also at 16x16, where positions are still
    # resolved, its queries told where they are (docs/text.md measures the difference).
    "text-small": dict(in_channels=3, image_size=32, channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
                       attn_resolutions=(8,), cross_attn_resolutions=(16, 8), cross_attn_positions=True,
                       dropout=0.0),
}
