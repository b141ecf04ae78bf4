"""Run-directory I/O: JSON configs and safetensors checkpoints, written atomically, never pickled.

Layout of a run directory::

    config.json                 the TrainConfig plus the net / process / denoiser configs
    log.jsonl                   one JSON line per logged step
    checkpoints/step-00001000/  model.safetensors, ema.safetensors, optimizer.safetensors,
                                rng.safetensors, state.json
    checkpoints/latest          the name of the newest complete checkpoint
    samples/                    grids written during and after training

A checkpoint is written into a temporary folder and renamed into place, and ``latest`` is
replaced atomically afterwards: a crash at any moment leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

KEEP_CHECKPOINTS = 2


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Write via ``write(tmp_path)`` (e.g. safetensors' ``save_file``) then ``os.replace``, so
    readers never see a half-written file; the temporary file is removed on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: is this a run directory written by "
                                "`undiffuse train`?") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); restore it or start a new run") from None


def cache_dir(kind: str, override: str | Path | None = None) -> Path:
    """Where undiffuse caches ``kind`` (feature nets, adherence judges, caption embeddings):
    ``override``, else ``$UNDIFFUSE_CACHE/kind``, else ``~/.cache/undiffuse/kind``."""
    if override is not None:
        return Path(override)
    env = os.environ.get("UNDIFFUSE_CACHE")
    return Path(env) / kind if env else Path.home() / ".cache" / "undiffuse" / kind


def save_cached_net(net: torch.nn.Module, info: dict, directory: str | Path) -> None:
    """A cached helper net (feature net, judge): ``model.safetensors``, then ``info.json`` (its
    config and version; written last, so it marks the cache complete)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / "model.safetensors", lambda p: save_file(_contiguous(net.state_dict()), p))
    atomic_write(d / "info.json", lambda p: Path(p).write_text(json.dumps(info, indent=2)))


def load_cached_net(cls: type[torch.nn.Module], directory: str | Path, version: str) -> tuple[torch.nn.Module, dict]:
    """The net ``save_cached_net`` wrote (eval mode) and its info; raises if missing, corrupt or of
    another ``version``."""
    d = Path(directory)
    info = json.loads((d / "info.json").read_text())
    if info.get("version") != version:
        raise ValueError(f"cache version {info.get('version')!r} != {version!r}")
    net = cls(**info["config"])
    net.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
    return net.eval(), info


def _contiguous(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            key = f"{idx}.{name}"
            if torch.is_tensor(val):
                tensors[key] = val
            else:
                scalars[key] = val
    return _contiguous(tensors), {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, val in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    opt: torch.optim.Optimizer, rng: dict[str, torch.Tensor], state: dict) -> Path:
    """Write checkpoint ``step`` atomically and keep the newest KEEP_CHECKPOINTS."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}."))
    save_file(_contiguous(model.state_dict()), str(tmp / "model.safetensors"))
    save_file(_contiguous(ema.state_dict()), str(tmp / "ema.safetensors"))
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    save_file(_contiguous(rng), str(tmp / "rng.safetensors"))
    write_json(tmp / "state.json", {**state, "step": step, "optimizer": opt_meta})
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    # Never delete the checkpoint just written, even when a run restarted from scratch in this
    # directory left checkpoints with higher step numbers (``latest`` names this one).
    others = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
    for old in others[:max(0, len(others) - (KEEP_CHECKPOINTS - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is missing; delete the pointer "
                                "to start over or restore the folder")
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path} is missing") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read weights {path}: {e}. The file is corrupt or not a "
                         "safetensors file; resume from an earlier checkpoint") from None
