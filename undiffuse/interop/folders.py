"""What export and import share about folders: an output is written whole or not at all, into a
target that is new or empty, and an input file is read with an error naming it."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..checkpoint import step_name, write_json
from .diffusers_unet import InteropError

__all__ = ["check_target", "staged_folder", "write_json_file", "read_config", "config_values", "read_tensors",
           "check_tensors", "write_imported_checkpoint"]


def check_target(out: Path, flag: str) -> None:
    """Refuse an output folder that exists with something in it (or is a file): nothing is
    overwritten or mixed with what is there."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise InteropError(f"{flag} {out} exists and is not a folder; choose a new path")
    if out.is_dir() and any(out.iterdir()):
        raise InteropError(f"{flag} {out} exists and is not empty; choose a new folder (or empty this one): "
                           "nothing is overwritten")


@contextmanager
def staged_folder(out: Path, flag: str) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; renamed to ``out`` when the block ends
    without an error, deleted otherwise (so a refusal or a crash writes nothing at ``out``)."""
    check_target(out, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.new-"))
    try:
        yield tmp
        check_target(out, flag)  # again: something may have appeared there meanwhile
        if out.is_dir():
            out.rmdir()  # empty (checked): rename cannot replace a folder otherwise on every system
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_file(path: Path, obj: Any) -> None:
    """``checkpoint.write_json`` (sorted keys, as diffusers' ``save_config`` writes), its folder made first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, obj)


def read_config(path: Path, what: str) -> dict:
    """A JSON object file of a diffusers folder, or an error naming the file."""
    if not path.is_file():
        raise InteropError(f"{path} is missing: a diffusers folder for {what} needs it "
                           "(as written by `save_pretrained`)")
    try:
        obj = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InteropError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise InteropError(f"{path} holds {type(obj).__name__}, not a JSON object")
    return obj


@contextmanager
def config_values(path: Path) -> Iterator[None]:
    """Turn what a setting of the wrong type raises while a config is read (a string where a number
    belongs, say) into an error naming the file; our own refusals pass through."""
    try:
        yield
    except InteropError:
        raise
    except (TypeError, ValueError, KeyError, IndexError) as e:
        raise InteropError(f"{path}: a setting has a value of the wrong type or form ({type(e).__name__}: {e}); "
                           "the file was not written by diffusers' save_pretrained, or was edited") from None


def read_tensors(folder: Path, name: str) -> dict[str, Tensor]:
    """``folder/name.safetensors``; a pickled ``name.bin`` alone is refused (loading it would run code)."""
    path = folder / f"{name}.safetensors"
    if not path.is_file():
        pickled = folder / f"{name}.bin"
        hint = (f" ({pickled.name} is there, a pickle, which undiffuse never loads: re-save the model with "
                "diffusers' save_pretrained(..., safe_serialization=True))") if pickled.exists() else ""
        raise InteropError(f"{path} is missing{hint}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InteropError(f"cannot read {path}: {e}; it is corrupt or not a safetensors file") from None


def check_tensors(expected: dict[str, tuple[int, ...]], tensors: dict[str, Tensor], path: Path, config: str) -> None:
    """Refuse ``tensors`` (read from ``path``) unless they are exactly the float tensors ``expected``
    (name -> shape, as ``config`` implies), naming the first that is missing, unexpected or misshapen."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InteropError(f"{path} lacks tensor {missing[0]!r}{more}: the weights and {config} are of "
                           "different models")
    if extra:
        raise InteropError(f"{path} holds tensor {extra[0]!r}, which {config} does not describe: the weights and "
                           f"{config} are of different models")
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != tuple(shape) or not t.is_floating_point():
            raise InteropError(f"{path}: tensor {name!r} is {t.dtype} {tuple(t.shape)}, but {config} implies a float "
                               f"{tuple(shape)}: the weights and {config} are of different models")


def write_imported_checkpoint(run_dir: Path, state: dict[str, Tensor]) -> Path:
    """``run_dir/checkpoints/step-00000000/{model,ema}.safetensors`` (both ``state``: a diffusers folder has
    one set of weights, and no training state to resume from) with ``checkpoints/latest``; returns the
    checkpoint folder."""
    ckpt = run_dir / "checkpoints" / step_name(0)
    ckpt.mkdir(parents=True)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    for name in ("model", "ema"):
        save_file(state, str(ckpt / f"{name}.safetensors"))
    (run_dir / "checkpoints" / "latest").write_text(step_name(0) + "\n")
    return ckpt
