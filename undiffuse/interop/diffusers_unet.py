"""undiffuse's ``UNet`` and diffusers' ``UNet2DModel``: the config and the tensor names, both ways.

The two nets are the same DDPM U-Net (diffusers' is a port of Ho et al.'s): conv_in, per level
residual blocks (with self-attention at chosen levels) and a stride-2 conv, a middle
Res-Attn-Res, a decoder with one block more per level and nearest-neighbour upsampling with a
conv, GroupNorm-SiLU-conv out. Each residual block is GroupNorm-SiLU-conv, the embedding added
(``resnet_time_scale_shift="default"``, our ``scale_shift=False``) or applied as scale and shift
of the second GroupNorm (``"scale_shift"``), SiLU-dropout-conv, a 1x1 conv on the skip when the
channels change. So a weight is the same weight, under another name, with two layout changes:

* our attention's 1x1 convs are diffusers' Linear layers (``(C, C, 1, 1)`` <-> ``(C, C)``);
* our fused ``qkv`` conv is diffusers' separate ``to_q``, ``to_k``, ``to_v`` (rows in that order,
  heads contiguous within each: the same split as ours).

``tensor_map`` lists every pair once; export and import both read it, so the two directions
cannot drift apart. What differs in the configs is refused by ``check_exportable`` (ours) and
``unet_from_diffusers`` (theirs), each naming the layer or setting. The time input is handled in
``export.py`` / ``import_.py``: undiffuse's label for DDPM step n of N is ``1000 n / N``, diffusers'
timestep is ``n - 1``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..nets import UNet
from ..nets.attention import AttentionBlock, num_heads

__all__ = ["Pair", "tensor_map", "check_exportable", "unet_to_diffusers", "unet_from_diffusers",
           "DIFFUSERS_VERSION", "InteropError"]

#: The diffusers release whose layout this module writes and reads (tests/test_interop_*.py check it).
DIFFUSERS_VERSION = "0.42.1"


class InteropError(ValueError):
    """A run or a diffusers folder that the other side cannot express: the message names the layer
    or setting, and why."""


def check_settings(c: dict, where: str, fixed: dict, known, what: str) -> Callable[[str, str], InteropError]:
    """Refuse a diffusers config (``where``: its path) with a key outside ``fixed`` and ``known``, or
    a ``fixed`` key at another value; returns the ``refuse(key, why)`` that names further problems."""
    def refuse(key: str, why: str) -> InteropError:
        return InteropError(f"{where}: {key}={c.get(key)!r}: {why}")

    unknown = sorted(k for k in c if not k.startswith("_") and k not in fixed and k not in known)
    if unknown:
        raise refuse(unknown[0], f"a {what} setting this importer does not know (newer diffusers?)")
    for key, value in fixed.items():
        if c.get(key, value) != value:
            raise refuse(key, f"undiffuse has no such option (it computes {key}={value!r})")
    return refuse


@dataclass(frozen=True)
class Pair:
    """One of our tensors and the diffusers tensor(s) holding the same numbers.

    ``kind``: "same" (identical layout), "linear" (our 1x1 conv weight is their Linear weight),
    "qkv" (our fused q, k, v rows are their ``to_q``, ``to_k``, ``to_v``)."""

    ours: str
    theirs: tuple[str, ...]
    kind: str = "same"

    def to_theirs(self, t: Tensor) -> list[Tensor]:
        if self.kind == "qkv":
            return [_as_linear(p) for p in t.chunk(3, dim=0)]
        return [_as_linear(t) if self.kind == "linear" else t]

    def to_ours(self, ts: list[Tensor], ours_shape: torch.Size) -> Tensor:
        t = torch.cat(ts, dim=0) if self.kind == "qkv" else ts[0]
        return t.reshape(ours_shape)

    def their_shapes(self, ours_shape: torch.Size) -> list[tuple[int, ...]]:
        """The shapes diffusers holds for one of our tensors of ``ours_shape`` (for checking a file)."""
        return [tuple(t.shape) for t in self.to_theirs(torch.empty(ours_shape, device="meta"))]


def _as_linear(t: Tensor) -> Tensor:
    # A 1x1 conv weight (out, in, 1, 1) is a Linear weight (out, in); biases stay as they are.
    return t.reshape(t.shape[:2]) if t.ndim == 4 else t


def _module_pairs(ours: str, theirs: str, names: dict[str, str], kinds: dict[str, str] | None = None) -> list[Pair]:
    """Weight and bias of each layer ``names`` maps (our name -> theirs, "|" between several of theirs),
    under the module paths ``ours`` and ``theirs`` ("" at the top)."""
    kinds = kinds or {}
    return [Pair(_join(ours, a, p), tuple(_join(theirs, b, p) for b in b_names.split("|")), kinds.get(a, "same"))
            for a, b_names in names.items() for p in ("weight", "bias")]


def _join(*parts: str) -> str:
    return ".".join(part for part in parts if part)


#: Our residual block's layers -> ResnetBlock2D's; our attention's -> Attention's ("|": one our
#: tensor holds several of theirs).
RESNET = {"norm1": "norm1", "conv1": "conv1", "emb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
          "skip": "conv_shortcut"}
ATTENTION = {"norm": "group_norm", "qkv": "to_q|to_k|to_v", "proj": "to_out.0"}
ATTENTION_KINDS = {"qkv": "qkv", "proj": "linear"}


def _block_pairs(net: UNet, ours: str, resnet: str, attention: str) -> list[Pair]:
    """A UNetBlock at ``ours`` is a ResnetBlock2D at ``resnet`` and, with self-attention, an Attention
    at ``attention``."""
    block = net.get_submodule(ours)
    names = {a: b for a, b in RESNET.items() if not (a == "skip" and isinstance(block.skip, nn.Identity))}
    pairs = _module_pairs(ours, resnet, names)
    if block.attn is not None:
        pairs += _module_pairs(f"{ours}.attn", attention, ATTENTION, ATTENTION_KINDS)
    return pairs


def tensor_map(net: UNet) -> list[Pair]:
    """Every tensor of ``net`` (a UNet that ``check_exportable`` accepts) with its diffusers name."""
    pairs = _module_pairs("time_emb", "time_embedding", {"fc1": "linear_1", "fc2": "linear_2"})
    pairs += _module_pairs("", "", {"conv_in": "conv_in", "norm_out": "conv_norm_out", "conv_out": "conv_out"})
    if net.class_emb.table is not None:
        pairs.append(Pair("class_emb.table.weight", ("class_embedding.weight",)))
    levels, per_level = net.num_levels, net.config["num_res_blocks"]
    index = 0
    for level in range(levels):  # encoder: blocks, then a downsample except on the last level
        for i in range(per_level):
            pairs += _block_pairs(net, f"enc.{index}", f"down_blocks.{level}.resnets.{i}",
                                  f"down_blocks.{level}.attentions.{i}")
            index += 1
        if level < levels - 1:
            pairs += _module_pairs(f"enc.{index}", f"down_blocks.{level}.downsamplers.0", {"conv": "conv"})
            index += 1
    pairs += _block_pairs(net, "mid.0", "mid_block.resnets.0", "mid_block.attentions.0")
    pairs += _block_pairs(net, "mid.1", "mid_block.resnets.1", "")
    index = 0
    for up in range(levels):  # decoder: up block u works at level levels - 1 - u
        for i in range(per_level + 1):
            pairs += _block_pairs(net, f"dec.{index}", f"up_blocks.{up}.resnets.{i}", f"up_blocks.{up}.attentions.{i}")
            index += 1
        if up < levels - 1:
            pairs += _module_pairs(f"dec.{index}", f"up_blocks.{up}.upsamplers.0", {"conv": "conv"})
            index += 1
    return pairs


# --- configs ----------------------------------------------------------------------------------------

def _uniform(values: dict[str, int], what: str, fix: str) -> int:
    """The one value every layer in ``values`` (layer name -> value) has, or a refusal naming the first
    layer that differs from the first."""
    items = list(values.items())
    first_name, first = items[0]
    for name, value in items[1:]:
        if value != first:
            raise InteropError(f"layer {name} has {what} {value} but {first_name} has {first}: diffusers' "
                               f"UNet2DModel has one {what} for every layer; {fix}")
    return first


def check_exportable(net: nn.Module) -> None:
    """Refuse a net that UNet2DModel cannot express, naming the layer or setting."""
    if not isinstance(net, UNet):
        raise InteropError(f"the run's net is {type(net).__name__}; diffusers' UNet2DModel holds only "
                           "undiffuse's U-Net (net type 'unet')")
    cfg = net.config
    if cfg["context_dim"] is not None:
        first = next(name for name, m in net.named_modules() if type(m).__name__ == "CrossAttentionBlock")
        raise InteropError(f"layer {first} (CrossAttentionBlock) and text_cond (TextConditioning) have no "
                           "UNet2DConditionModel counterpart: diffusers cross-attends inside Transformer2DModel "
                           "blocks (self-attention, cross-attention and a feed-forward, with their own norms), "
                           "and adds no pooled caption embedding at addition_embed_type=None; text runs are "
                           "not exported")
    if not cfg["resample_with_conv"]:
        raise InteropError("resample_with_conv=False (layers enc.*/dec.* Downsample/Upsample without a conv): "
                           "UNet2DModel's DownBlock2D and UpBlock2D always resample with a conv")
    if cfg["channel_mult"][0] != 1:
        raise InteropError(f"channel_mult[0]={cfg['channel_mult'][0]}: UNet2DModel's conv_in and conv_norm_out "
                           "have block_out_channels[0] channels, ours `channels`; they agree only at channel_mult[0]=1")
    _uniform({name: m.num_groups for name, m in net.named_modules() if isinstance(m, nn.GroupNorm)},
             "GroupNorm group count", "choose num_groups dividing every channel count")
    _head_dim(net)


def _head_dim(net: UNet) -> int | None:
    """diffusers' attention_head_dim for our attention blocks: their common head width, or None
    (diffusers' one head per block) when every block has a single head."""
    blocks = {name: m for name, m in net.named_modules() if isinstance(m, AttentionBlock)}
    if all(m.num_heads == 1 for m in blocks.values()):
        return None
    widths = {name: m.qkv.in_channels // m.num_heads for name, m in blocks.items()}
    return _uniform(widths, "attention head width", "choose head_dim dividing every attention block's channels")


def unet_to_diffusers(net: UNet, time_embedding_type: str, num_train_timesteps: int) -> dict:
    """UNet2DModel's config.json for ``net`` (``check_exportable`` first)."""
    cfg = net.config
    attn = [(net.image_size >> level) in cfg["attn_resolutions"] for level in range(net.num_levels)]
    groups = next(m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm))
    return {
        "_class_name": "UNet2DModel", "_diffusers_version": DIFFUSERS_VERSION,
        "sample_size": net.image_size, "in_channels": net.in_channels, "out_channels": net.out_channels,
        "center_input_sample": False, "time_embedding_type": time_embedding_type, "time_embedding_dim": None,
        "freq_shift": 0, "flip_sin_to_cos": True,  # our sinusoid: cosines first, frequencies 10000^(-i/half)
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "block_out_channels": [cfg["channels"] * m for m in cfg["channel_mult"]],
        "layers_per_block": cfg["num_res_blocks"], "mid_block_scale_factor": 1, "downsample_padding": 1,
        "downsample_type": "conv", "upsample_type": "conv", "dropout": cfg["dropout"], "act_fn": "silu",
        "attention_head_dim": _head_dim(net), "norm_num_groups": groups,
        # Explicit: with scale_shift diffusers would otherwise build the middle attention without a GroupNorm.
        "attn_norm_num_groups": groups, "norm_eps": 1e-5,
        "resnet_time_scale_shift": "scale_shift" if cfg["scale_shift"] else "default", "add_attention": True,
        "class_embed_type": None,
        "num_class_embeds": None if net.num_classes is None else net.num_classes + 1,  # + our null class
        "num_train_timesteps": num_train_timesteps,
    }


#: UNet2DModel settings our U-Net has no option for: the only value it can express.
FIXED = {"center_input_sample": False, "freq_shift": 0, "flip_sin_to_cos": True, "mid_block_type": "UNetMidBlock2D",
         "mid_block_scale_factor": 1, "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv",
         "act_fn": "silu", "norm_eps": 1e-5, "add_attention": True, "class_embed_type": None}
#: Settings read below (or only needed by diffusers to build its time table).
READ = {"sample_size", "in_channels", "out_channels", "time_embedding_type", "time_embedding_dim",
        "down_block_types", "up_block_types", "block_out_channels", "layers_per_block", "dropout",
        "attention_head_dim", "norm_num_groups", "attn_norm_num_groups", "resnet_time_scale_shift",
        "num_class_embeds", "num_train_timesteps"}


def unet_from_diffusers(c: dict, where: str) -> dict:
    """Our ``build_net`` config for a UNet2DModel config.json (``where``: its path, for messages);
    refuses, naming the setting, what our U-Net cannot express."""
    refuse = check_settings(c, where, FIXED, READ, "UNet2DModel")
    if c.get("time_embedding_type", "positional") not in ("positional", "learned"):
        raise refuse("time_embedding_type", "undiffuse's U-Net embeds time sinusoidally ('positional'; a "
                                            "'learned' table only when it is undiffuse's own sinusoid)")
    channels = list(c.get("block_out_channels", (224, 448, 672, 896)))
    base = channels[0]
    if any(ch % base for ch in channels):
        raise refuse("block_out_channels", "each must be a multiple of the first (our channels * channel_mult)")
    if c.get("time_embedding_dim") not in (None, 4 * base):
        raise refuse("time_embedding_dim", f"our time embedding has 4 * block_out_channels[0] = {4 * base} channels")
    size = c.get("sample_size")
    size = size[0] if isinstance(size, (list, tuple)) and len(set(size)) == 1 else size
    if not isinstance(size, int):
        raise refuse("sample_size", "undiffuse's U-Net needs one square image size")
    attn = _attention_levels(c, refuse)
    groups = c.get("norm_num_groups", 32)
    if any(ch % groups for ch in channels):  # diffusers would not build; our gcd rule would differ
        raise refuse("norm_num_groups", f"must divide every entry of block_out_channels {channels}")
    if c.get("attn_norm_num_groups") not in (None, groups) or (
            c.get("attn_norm_num_groups") is None and c.get("resnet_time_scale_shift") == "scale_shift"):
        raise refuse("attn_norm_num_groups", f"our attention always has a GroupNorm of norm_num_groups={groups} "
                                             "groups (with scale_shift, set it explicitly)")
    shift = c.get("resnet_time_scale_shift", "default")
    if shift not in ("default", "scale_shift"):
        raise refuse("resnet_time_scale_shift", "our blocks add the embedding ('default') or scale and shift "
                                                "the second GroupNorm ('scale_shift')")
    classes = c.get("num_class_embeds")
    if classes is not None and classes < 2:
        raise refuse("num_class_embeds", "the last class becomes undiffuse's null class: at least 2 are needed")
    out = c.get("out_channels", 3)
    if out != c.get("in_channels", 3):
        raise refuse("out_channels", f"differs from in_channels={c.get('in_channels', 3)} (a learned variance "
                                     "or another output is not imported)")
    attn_channels = [ch for ch, a in zip(channels, attn) if a] + [channels[-1]]  # + the middle block
    return {
        "type": "unet", "in_channels": c.get("in_channels", 3), "out_channels": out, "image_size": size,
        "channels": base, "channel_mult": [ch // base for ch in channels],
        "num_res_blocks": c.get("layers_per_block", 2),
        "attn_resolutions": [size >> level for level, a in enumerate(attn) if a], "dropout": c.get("dropout", 0.0),
        "num_classes": None if classes is None else classes - 1,
        "head_dim": _our_head_dim(c.get("attention_head_dim", 8), attn_channels, refuse),
        "num_groups": groups, "resample_with_conv": True, "scale_shift": shift == "scale_shift",
    }


def _attention_levels(c: dict, refuse: Callable[[str, str], InteropError]) -> list[bool]:
    down = list(c.get("down_block_types", ()))
    up = list(c.get("up_block_types", ()))
    known = {"DownBlock2D": False, "AttnDownBlock2D": True}
    for name in down:
        if name not in known:
            raise refuse("down_block_types", f"{name} has no undiffuse counterpart (known: {sorted(known)})")
    attn = [known[name] for name in down]
    if up != ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]:
        raise refuse("up_block_types", "our decoder attends at the levels where the encoder does: expected "
                                       f"{['AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attn)]}")
    return attn


def _our_head_dim(head_dim: int | None, attn_channels: list[int], refuse) -> int:
    """Our head_dim giving diffusers' heads (``channels // attention_head_dim``; None: one head) in
    every attention block of ``attn_channels`` channels."""
    if head_dim is None:
        return max(attn_channels)  # >= every block's channels: one head each, as num_heads gives
    for ch in attn_channels:
        if ch % head_dim or num_heads(ch, head_dim) != ch // head_dim:
            raise refuse("attention_head_dim", f"must divide every attention block's channels ({ch} here)")
    return head_dim

