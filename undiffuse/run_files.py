"""A run directory read back, checked: ``config.json`` has what loading needs and agrees with
itself, the weights fit the network it describes, and a checkpoint's training state (state.json,
rng.safetensors, optimizer.safetensors) is complete. Every problem is a ValueError naming the file
and what is wrong in it, instead of a KeyError, a TypeError or a size mismatch from deep inside
torch; a config that loads but describes other images than the weights were trained on is refused
rather than sampled from. (The files are JSON and safetensors: nothing is unpickled.)
"""
from __future__ import annotations

from contextlib import contextmanager
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from .checkpoint import load_weights, optimizer_from_flat, read_json
from .config import upgrade_saved
from .nets import NET_TYPES, MLPDenoiser, UNet, build_net
from .cold import is_cold

FIX = "restore the file from the run (or a backup), or train a new run"


def _int(minimum: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, Integral) and not isinstance(v, bool) and v >= minimum


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _shape(v: Any) -> bool:
    return isinstance(v, list) and len(v) in (1, 3) and all(_int(1)(d) for d in v)


def _names(v: Any) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(s, str) for s in v))


#: (key path, test, what it must be) for every entry of config.json that loading reads, parents
#: first, so the first failing entry is the one to report.
_ENTRIES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("train", lambda v: isinstance(v, dict), "an object with the training settings"),
    ("train.data", lambda v: isinstance(v, str), "a dataset name or path"),
    ("net", lambda v: isinstance(v, dict), "an object with the network's settings"),
    ("net.type", lambda v: v in NET_TYPES, f"one of {sorted(NET_TYPES)}"),
    ("process", lambda v: isinstance(v, dict), "an object with the forward process's settings"),
    ("process.type", lambda v: isinstance(v, str), "a process name"),
    ("denoiser", lambda v: isinstance(v, dict), "an object with the denoiser's settings"),
    ("data", lambda v: isinstance(v, dict), "an object with the shape and classes of the data"),
    ("data.shape", _shape, "a list of 3 (images: channels, height, width) or 1 (points) positive integers"),
    ("data.num_classes", lambda v: v is None or _int(1)(v), "null or an integer >= 1"),
]
_OPTIONAL: list[tuple[str, Callable[[Any], bool], str]] = [
    ("data.class_names", _names, "null or a list of strings"),
    ("text", lambda v: v is None or isinstance(v, dict), "null or an object naming the text encoder"),
]
_TEXT = [("text.encoder", lambda v: isinstance(v, str), "a text encoder name"),
         ("text.max_length", _int(1), "an integer >= 1"), ("text.dim", _int(1), "an integer >= 1")]
_GAUSSIAN = [("denoiser.prediction", lambda v: isinstance(v, str), "a parameterization name"),
             ("denoiser.sigma_data", _number, "a number"),
             ("denoiser.learn_variance", lambda v: isinstance(v, bool), "true or false"),
             ("denoiser.clip_x0", lambda v: v is None or _number(v), "null or a number")]
_STATE = [("step", _int(0), "an integer >= 0"), ("optimizer", lambda v: isinstance(v, dict), "an object"),
          ("optimizer.param_groups", lambda v: isinstance(v, list), "a list"),
          ("optimizer.scalars", lambda v: isinstance(v, dict), "an object")]
_MISSING = object()


def _get(cfg: dict, key: str) -> Any:
    for part in key.split("."):
        cfg = cfg.get(part, _MISSING) if isinstance(cfg, dict) else _MISSING
    return cfg


def _problem(cfg: Any) -> str | None:
    """The first thing wrong with a config.json's content, or None."""
    if not isinstance(cfg, dict):
        return f"holds {type(cfg).__name__}, not an object"
    entries = [*_ENTRIES, *[e for e in _OPTIONAL if _get(cfg, e[0]) is not _MISSING]]
    entries += _TEXT if isinstance(cfg.get("text"), dict) else []
    # Cold runs and autoencoder runs (train-autoencoder) have no Gaussian denoiser settings.
    entries += [] if is_cold(cfg.get("process")) or is_autoencoder_run(cfg) else _GAUSSIAN
    return _first_problem(cfg, entries)


def is_autoencoder_run(cfg: dict) -> bool:
    """Whether a config.json is an autoencoder run's (`undiffuse train-autoencoder`)."""
    process = cfg.get("process")
    return isinstance(process, dict) and process.get("type") == "autoencoder"


def _first_problem(obj: Any, entries: list[tuple[str, Callable[[Any], bool], str]]) -> str | None:
    """The first of ``entries`` that ``obj`` (a JSON object) lacks or holds wrongly, or None."""
    if not isinstance(obj, dict):
        return f"holds {type(obj).__name__}, not an object"
    for key, ok, what in entries:
        value = _get(obj, key)
        if value is _MISSING:
            return f"lacks the entry {key!r} ({what})"
        if not ok(value):
            return f"has {key!r} = {value!r}, which should be {what}"
    return None


def read_run_config(run_dir: str | Path) -> dict:
    """A run directory's config.json, checked to hold every entry that loading reads, its training
    settings under today's names (a run saved with "steps" reads as "max_train_steps")."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; train one with "
                                "`undiffuse train --out DIR`")
    path = run_dir / "config.json"
    cfg = read_json(path)
    problem = _problem(cfg)
    if problem:
        raise ValueError(f"{path} {problem}; {FIX}")
    try:
        cfg["train"] = upgrade_saved(cfg["train"])
    except ValueError as e:
        raise ValueError(f"{path}: its 'train' entry {e}; {FIX}") from None
    return cfg


@contextmanager
def config_errors(path: Path, entry: str) -> Iterator[None]:
    """Turn what building from a config entry raises (TypeError, KeyError, ...) into a ValueError
    naming the file and the entry."""
    try:
        yield
    except (TypeError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: its {entry} entry does not build ({type(e).__name__}: {e}); {FIX}") from None


def build_run_net(cfg: dict, path: Path) -> nn.Module:
    """The network of a checked config (``read_run_config``), refused when it does not match the
    config's data (channels, image size, classes, text width): the weights would load, but the
    samples would be of the wrong kind."""
    with config_errors(path, "'net'"):
        net = build_net(cfg["net"])
    problem = _net_problem(net, cfg)
    if problem:
        raise ValueError(f"{path}: {problem}; the entries disagree, so this is not the config the run was "
                         f"trained with; {FIX}")
    return net


def _net_problem(net: nn.Module, cfg: dict) -> str | None:
    """How the network built from 'net' disagrees with 'data', 'text' and 'denoiser', or None."""
    shape, classes = cfg["data"]["shape"], cfg["data"]["num_classes"]
    out = shape[0] * (2 if cfg["denoiser"].get("learn_variance") else 1)
    # A cold restorer with a standardized input sees three planes per channel (ColdRestorer).
    inp = shape[0] * (3 if cfg["denoiser"].get("standardize_input") else 1)
    if isinstance(net, UNet):
        if len(shape) != 3 or shape[1] != shape[2]:
            return f"'net' is a U-Net for square images, but 'data.shape' is {shape}"
        if (net.in_channels, net.out_channels) != (inp, out):
            return (f"'net' takes {net.in_channels}-channel images (output: {net.out_channels} channels), but "
                    f"'data.shape' {shape} needs {inp} (output: {out})")
        if net.image_size != shape[-1]:
            return f"'net' was built for {net.image_size}x{net.image_size} images, but 'data.shape' is {shape}"
    elif isinstance(net, MLPDenoiser) and (len(shape) != 1 or (net.dim, net.out_dim) != (shape[0], out)):
        return f"'net' is an MLP on {net.dim}-D points (output {net.out_dim}), but 'data.shape' is {shape}"
    if net.num_classes != classes:
        return f"'net' has num_classes {net.num_classes}, but 'data.num_classes' is {classes}"
    text_dim = (cfg.get("text") or {}).get("dim")
    if getattr(net, "context_dim", None) != text_dim:
        return f"'net' has context_dim {getattr(net, 'context_dim', None)}, but 'text' says {text_dim}"
    return None


def load_checked(module: nn.Module, path: Path) -> None:
    """Load the weights file ``path`` into ``module``, refused with a message listing what does not
    fit when it holds another network's weights."""
    tensors = load_weights(path)
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    wrong = [f"{k} {tuple(tensors[k].shape)} (the network's: {tuple(v.shape)})"
             for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    parts = [f"{len(names)} {what}, e.g. {names[0]}" for names, what in
             ((missing, "tensors missing"), (extra, "unexpected tensors"), (wrong, "of other shapes")) if names]
    if parts:
        raise ValueError(f"weights {path} do not fit the network that the run's config.json describes: "
                         f"{'; '.join(parts)}. They are another network's (copied from another run?); "
                         "restore this run's checkpoint, or load them with that run's config.json")
    module.load_state_dict(tensors)


def read_training_state(ckpt: Path) -> tuple[dict, dict[str, Tensor]]:
    """A checkpoint's state.json and rng.safetensors, checked to hold what resuming sets."""
    state = read_json(ckpt / "state.json")
    problem = _first_problem(state, _STATE)
    if problem:
        raise ValueError(f"{ckpt / 'state.json'} {problem}; resume from an earlier checkpoint (point "
                         "checkpoints/latest at it) or start a new run")
    rng = load_weights(ckpt / "rng.safetensors")
    for key, size in (("generator", torch.Generator().get_state().numel()),
                      ("torch_global", torch.get_rng_state().numel())):
        value = rng.get(key)
        if value is None or value.dtype != torch.uint8 or value.shape != (size,):
            got = "missing" if value is None else f"{value.dtype} {tuple(value.shape)}"
            raise ValueError(f"{ckpt / 'rng.safetensors'}: {key!r} must be a uint8 random-number state of "
                             f"{size} bytes, got {got}; resume from an earlier checkpoint or start a new run")
    return state, rng


def restore_optimizer(opt: torch.optim.Optimizer, ckpt: Path, meta: dict) -> None:
    """Load optimizer.safetensors (with state.json's 'optimizer') into ``opt``, refused with a
    message naming the files when they do not fit."""
    tensors = load_weights(ckpt / "optimizer.safetensors")
    try:
        optimizer_from_flat(opt, tensors, meta)
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise ValueError(f"{ckpt / 'optimizer.safetensors'} and the 'optimizer' entry of {ckpt / 'state.json'} do "
                         f"not fit this run's optimizer ({type(e).__name__}: {e}); resume from an earlier "
                         "checkpoint or start a new run") from None
