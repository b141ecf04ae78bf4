"""Checks of user settings shared by the command line and the Python API, so that bad input fails
early with a message naming the setting, never with a traceback or a silently wrong result.

* ``check_sample_settings``: what every sampling entry point takes (``undiffuse sample``, ``undiffuse
  eval``, the grids written while training, ``Pipeline.sample``).
* ``check_output_file`` / ``check_output_dir``: a path to write is not a folder where a file is
  expected (or a file where a folder is), and does not lie under a file.
* ``check_finite_samples``: samples are finite before anyone writes or measures them.
* ``check_data_fits``: a training run's process, network and batch size fit the data it loaded.

Guidance scales are bounded by ``MAX_GUIDANCE`` (|w| <= 100): useful scales are 0 to about 10
(Ho & Salimans 2022 stop at 4; Dhariwal & Nichol 2021's classifier scales at 10); far beyond that
the samples are all saturated pixels or overflow, which is a mistake rather than a setting.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from pathlib import Path

import torch
from torch import Tensor, nn

MAX_GUIDANCE = 100.0


def check_count(value, name: str, minimum: int = 1) -> None:
    """``value`` is an integer >= ``minimum`` (bools are refused: True is not a count)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def check_finite(value, name: str) -> None:
    """``value`` is a real number, neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")


def check_guidance(value, name: str) -> None:
    """A guidance scale: finite, and at most ``MAX_GUIDANCE`` in magnitude (see the module docstring)."""
    check_finite(value, name)
    if abs(value) > MAX_GUIDANCE:
        raise ValueError(f"{name} {value!r} is out of range: guidance scales must lie in "
                         f"[-{MAX_GUIDANCE:g}, {MAX_GUIDANCE:g}] (useful ones are about 0 to 10)")


def check_sample_settings(n: int, *, num_inference_steps: int | None = None, guidance: float = 1.0,
                          classifier_scale: float = 0.0, options: dict | None = None,
                          prefix: str = "") -> None:
    """The settings every sampler takes: ``n`` samples (>= 1), ``num_inference_steps`` (>= 1, None:
    the default), finite and bounded guidance scales, finite numeric sampler ``options``. ``prefix``
    ("--" on the command line) makes the messages name the flags."""
    check_count(n, f"{prefix}n")
    if num_inference_steps is not None:
        check_count(num_inference_steps, f"{prefix}num-inference-steps" if prefix else "num_inference_steps")
    check_guidance(guidance, f"{prefix}guidance")
    check_guidance(classifier_scale, f"{prefix}classifier-scale" if prefix else "classifier_scale")
    for key, value in (options or {}).items():
        if isinstance(value, float):
            check_finite(value, f"sampler option {key}")


def check_output_file(path: str | Path, name: str) -> Path:
    """A file about to be written: not an existing folder, not under a file. Returns the path."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; give the file to write, e.g. {path / 'samples.png'}")
    _check_parents(path, name)
    return path


def check_output_dir(path: str | Path, name: str) -> Path:
    """A folder about to be written into: not an existing file, not under a file. Returns the path."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path} is a file, not a folder; give a folder (new or existing)")
    _check_parents(path, name)
    return path


def _check_parents(path: Path, name: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder, or it cannot be created."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{name} {path} lies under {parent}, which is a file, not a folder; "
                                 "choose another path")
            return


def check_finite_samples(x: Tensor, model: nn.Module, source: str) -> Tensor:
    """``x`` when every value is finite; otherwise a ValueError saying whether the weights of
    ``model`` (from ``source``) or the sampling settings produce the NaN / inf. Returns ``x``."""
    finite = torch.isfinite(x)
    if bool(finite.all()):
        return x
    bad = int((~finite).sum())
    if any(not bool(torch.isfinite(p).all()) for p in model.parameters()):
        cause = (f"the weights of {source} contain NaN or inf (a diverged checkpoint); resume from or "
                 "sample an earlier checkpoint, or retrain")
    else:
        cause = ("the weights are finite, so the sampling settings diverge; lower the guidance scale, "
                 "use more steps or another sampler")
    raise ValueError(f"sampling produced {bad} non-finite values (NaN or inf) of {x.numel()}: {cause}")


def net_kind(net: str | dict) -> str:
    """"unet" or "mlp" (what ``build_net`` would build), or the unknown name as given."""
    from .nets import AUTOENCODER_PRESETS, NET_TYPES, UNET_PRESETS

    if isinstance(net, dict):
        return str(net.get("type"))
    if net in AUTOENCODER_PRESETS:
        return "autoencoder_kl"
    return "unet" if net in UNET_PRESETS else net if net in NET_TYPES else str(net)


def check_data_fits(cfg, data) -> None:
    """A training config (``TrainConfig``) suits the data it loaded: a cold process degrades images,
    a U-Net takes images and an MLP points, and ``batch_size`` is at most the number of items (a
    step draws that many distinct ones)."""
    images, net, batch_size = data.x.ndim == 4, cfg.net, cfg.batch_size
    if cfg.cold and not images:
        raise ValueError(f"the cold process {cfg.process!r} degrades images, but {data.name} holds "
                         f"{data.x.shape[1]}-D points; train it on mnist, digits or an image folder")
    if cfg.cold and images:
        _check_kernel_fits(cfg.process, min(data.x.shape[-2:]))
    kind, shown = net_kind(net), net if isinstance(net, str) else f"{{'type': {net_kind(net)!r}, ...}}"
    _check_autoencoder_net(cfg, kind, shown, images, data)
    if kind == "unet" and not images:
        raise ValueError(f"--net {shown} is a U-Net for images, but {data.name} holds "
                         f"{data.x.shape[1]}-D points; use --net mlp (as the toy2d preset does)")
    if kind == "mlp" and images:
        raise ValueError(f"--net {shown} is an MLP for low-dimensional points, but {data.name} holds images "
                         f"{tuple(data.x.shape[1:])}; use a U-Net preset such as tiny or mnist-demo")
    if batch_size > len(data):
        what = "images" if images else "points"
        raise ValueError(f"{data.name} has {len(data)} {what}, fewer than --batch-size {batch_size}: a "
                         f"batch needs that many distinct ones; use --batch-size {len(data)} or less, "
                         f"or add {what}")


def _check_autoencoder_net(cfg, kind: str, shown: str, images: bool, data) -> None:
    """An autoencoder net is trained by train-autoencoder on images, and nothing else trains one."""
    training = getattr(cfg, "autoencoder_training", False)
    if training and kind != "autoencoder_kl":
        raise ValueError(f"train-autoencoder trains a KL autoencoder, but --net {shown} is a {kind}; use --net kl-f4 "
                         "or kl-f8 (or a dict with 'type': 'autoencoder_kl')")
    if training and not images:
        raise ValueError(f"an autoencoder encodes images, but {data.name} holds {data.x.shape[1]}-D points")
    if kind == "autoencoder_kl" and not training:
        raise ValueError(f"--net {shown} is an autoencoder, not a denoiser: train it with `undiffuse "
                         "train-autoencoder --net ...`, then diffusion on its latents with `undiffuse train "
                         "--autoencoder RUN` and a U-Net --net")


def _check_kernel_fits(process, side: int) -> None:
    """A blur kernel no wider than the images: a wider one would wrap around them (circular padding)
    or reflect more than once, which is no longer the blur the run asks for."""
    from .cold.degradations import make_degradation

    k = getattr(make_degradation(process), "kernel_size", None)
    if k is not None and k > side:
        fit = side if side % 2 else side - 1
        raise ValueError(f"the blur kernel ({k} x {k}) is wider than the {side}-pixel images; use a kernel of at "
                         f"most {fit} pixels, e.g. --process blur:k={fit}")
