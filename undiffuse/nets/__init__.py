"""Denoising networks: the DDPM/ADM U-Net for images and a small MLP for toy data.

Every net is called as ``net(x, noise_label, cond=None)`` and returns a tensor with
``out_channels`` (U-Net) or ``out_dim`` (MLP) channels; ``cond`` is None, class labels (nets built
with ``num_classes``) or a text embedding (a U-Net built with ``context_dim``: cross-attention to
the caption's tokens, ``undiffuse.nets.attention``). ``build_net`` makes one from a preset
name or a config dict; ``net_config`` gives back the JSON-serialisable dict that rebuilds it,
so a run directory can store the architecture next to the weights.
"""
from __future__ import annotations

import copy
import inspect
import json

from torch import nn

from ..latent.autoencoder import AUTOENCODER_PRESETS, AutoencoderKL
from .attention import AttentionBlock, CrossAttentionBlock
from .embeddings import ClassEmbedding, TextConditioning, TimeEmbedding, timestep_embedding
from .mlp import MLPDenoiser
from .unet import UNET_PRESETS, UNet

__all__ = ["UNet", "MLPDenoiser", "TimeEmbedding", "ClassEmbedding", "TextConditioning", "timestep_embedding",
           "AttentionBlock", "CrossAttentionBlock",
           "UNET_PRESETS", "AUTOENCODER_PRESETS", "AutoencoderKL", "NET_TYPES", "build_net", "net_config",
           "config_differences"]

#: "autoencoder_kl" (presets kl-f4, kl-f8) is trained by `undiffuse train-autoencoder`, not as a denoiser.
NET_TYPES: dict[str, type[nn.Module]] = {"unet": UNet, "mlp": MLPDenoiser, "autoencoder_kl": AutoencoderKL}


def build_net(name_or_config: str | dict, **overrides) -> nn.Module:
    """Build a net from a preset name, a config dict, or either with keyword overrides.

    * ``build_net("ddpm-cifar10")``: a preset from ``UNET_PRESETS``;
    * ``build_net("unet")`` or ``build_net("mlp")``: that type with its default arguments;
    * ``build_net({"type": "mlp", "hidden": 128})``: what ``net_config`` returns;
    * ``build_net("mnist-small", num_classes=10)``: overrides win over the preset or dict.
    """
    if isinstance(name_or_config, str):
        if name_or_config in UNET_PRESETS:
            config = {"type": "unet", **UNET_PRESETS[name_or_config]}
        elif name_or_config in AUTOENCODER_PRESETS:
            config = {"type": "autoencoder_kl", **AUTOENCODER_PRESETS[name_or_config]}
        elif name_or_config in NET_TYPES:
            config = {"type": name_or_config}
        else:
            raise ValueError(f"unknown net {name_or_config!r}; presets: {sorted(UNET_PRESETS)}, "
                             f"autoencoders: {sorted(AUTOENCODER_PRESETS)}, "
                             f"types: {sorted(NET_TYPES)}")
    else:
        config = dict(name_or_config)
    config.update(overrides)
    net_type = config.pop("type", None)
    if net_type not in NET_TYPES:
        raise ValueError(f"net config needs 'type' in {sorted(NET_TYPES)}, got {net_type!r}")
    return NET_TYPES[net_type](**config)


def net_config(net: nn.Module) -> dict:
    """The JSON-serialisable dict (with ``"type"``) from which ``build_net`` rebuilds ``net``.

    It lists every constructor argument, defaults included, so the saved architecture does not
    change if a default does later. A ``torch.compile``-d net reports the net it wraps.
    """
    net = getattr(net, "_orig_mod", net)
    for net_type, cls in NET_TYPES.items():
        if isinstance(net, cls):
            return {"type": net_type, **copy.deepcopy(net.config)}
    raise TypeError(f"net_config knows {sorted(NET_TYPES)}, not {type(net).__name__}")


def config_differences(saved: dict | None, net: nn.Module) -> str:
    """How ``net`` differs from a saved ``net_config`` ("" when it does not, or nothing was saved),
    compared in JSON form; a key an older config lacks counts as the constructor's default."""
    if saved is None:
        return ""
    built = json.loads(json.dumps(net_config(net)))
    params = inspect.signature(NET_TYPES[built["type"]]).parameters.items()
    defaults = json.loads(json.dumps({k: p.default for k, p in params if p.default is not inspect.Parameter.empty}))
    changed = sorted(k for k in built if saved.get(k, defaults.get(k)) != built[k])
    return ", ".join(f"{k}: saved {saved.get(k, defaults.get(k))!r}, now {built[k]!r}" for k in changed)
