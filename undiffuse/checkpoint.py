"""Run-directory I/O: JSON configs and safetensors checkpoints, written atomically, never pickled.

Layout of a run directory::

    config.json                 the TrainConfig plus the net / process / denoiser configs
    log.jsonl                   one JSON line per logged step
    checkpoints/step-00001000/  model.safetensors, ema.safetensors, optimizer.safetensors,
                                rng.safetensors, state.json
    checkpoints/latest          the name of the newest complete checkpoint
    samples/                    grids written during and after training

A checkpoint is written into a hidden folder ``.step-N.new-*`` (every file fsynced, ``state.json``
last: a folder is *complete* when all CHECKPOINT_FILES exist), renamed into place, and only then
is ``latest`` replaced atomically. Re-saving a step that exists (a resumed run reaching a step an
interrupted run had saved) first renames the old folder aside to ``.step-N.old-*`` and deletes it
last. So a crash at any moment leaves ``latest`` naming a complete checkpoint, or naming a step
whose complete copy is one of those hidden folders: ``latest_checkpoint`` finds it, and
``recover_checkpoints`` (run when training resumes) moves it back into place, then deletes the
leftover temporaries.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

KEEP_CHECKPOINTS = 2
#: The files of a checkpoint folder; state.json is written last.
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors",
                    "state.json")
STEP_NAME = re.compile(r"step-[0-9]{8,}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and durably (see ``atomic_write``)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames, new files). Best effort: some systems (Windows, some
    network file systems) cannot open or fsync a folder."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[str], object], mode: int | None = None) -> Path:
    """Write ``path`` via ``write(tmp_path)`` (e.g. safetensors' ``save_file``), crash-safe.

    The temporary file sits in the target folder (so ``os.replace`` is an atomic rename, never a
    copy across file systems) and is fsynced before it replaces ``path``, then the folder is
    fsynced: readers and a crash see the old file or the whole new one, never a half-written one.
    On an error the temporary file is removed and ``path`` is left as it was. Missing parent folders
    are created. ``mode`` sets the permissions (``mkstemp`` makes the file private to its owner).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fsync_file(Path(tmp))
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    # Exception, not BaseException: an interrupt, like a kill, leaves the hidden temporary file, which
    # ``recover_checkpoints`` reports and removes beside ``latest``.
    except Exception:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself reaches the disk
    return path


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
    atomic_write_text(d / "info.json", json.dumps(info, indent=2))


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


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def is_complete(folder: Path) -> bool:
    """A real folder holding every checkpoint file: what a save leaves once ``state.json``, its last
    file, is written."""
    return folder.is_dir() and not folder.is_symlink() and all((folder / f).is_file() for f in CHECKPOINT_FILES)


def _write_checkpoint_files(folder: Path, model: torch.nn.Module, ema: torch.nn.Module,
                            opt: torch.optim.Optimizer, rng: dict[str, torch.Tensor], state: dict) -> None:
    save_file(_contiguous(model.state_dict()), str(folder / "model.safetensors"))
    save_file(_contiguous(ema.state_dict()), str(folder / "ema.safetensors"))
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    save_file(opt_tensors, str(folder / "optimizer.safetensors"))
    save_file(_contiguous(rng), str(folder / "rng.safetensors"))
    for name in CHECKPOINT_FILES[:-1]:  # on disk before state.json says the folder is complete
        fsync_file(folder / name)
    write_json(folder / "state.json", {**state, "optimizer": opt_meta})  # fsyncs it and the folder


def _set_aside(folder: Path) -> Path:
    """Rename ``folder`` to a hidden ``.NAME.old-*`` (atomically out of sight); returns the new path."""
    aside = folder.with_name(f".{folder.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(folder, aside)
    return aside


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, ema: torch.nn.Module,
                    opt: torch.optim.Optimizer, rng: dict[str, torch.Tensor], state: dict) -> Path:
    """Write checkpoint ``step`` crash-safely (see the module docstring), point ``latest`` at it and
    keep the newest KEEP_CHECKPOINTS."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = step_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.new-"))
    try:
        _write_checkpoint_files(tmp, model, ema, opt, rng, {**state, "step": step})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = root / name
    # An existing step-N is renamed aside, not deleted: until `latest` is rewritten below, a
    # complete copy of step N always exists under a name that recovery knows.
    old = _set_aside(final) if final.exists() or final.is_symlink() else None
    os.replace(tmp, final)
    fsync_dir(root)
    atomic_write_text(root / "latest", name + "\n")
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    # Never delete the checkpoint just written, even when a run restarted from scratch in this
    # directory left checkpoints with higher step numbers (``latest`` names this one).
    others = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
    for stale in others[:max(0, len(others) - (KEEP_CHECKPOINTS - 1))]:
        shutil.rmtree(_set_aside(stale), ignore_errors=True)  # never half a checkpoint in sight
    return final


# A hidden copy of checkpoint step-N: ``new`` written by a save, ``old`` set aside by one.
_HIDDEN = re.compile(r"\.(step-[0-9]{8,})\.(new|old)-.+")


def _complete_checkpoints(root: Path) -> list[tuple[int, int, str, Path]]:
    """Every complete checkpoint folder as (step, preference, name, path), sorted: for one step a
    visible ``step-N`` wins over a new hidden copy, which wins over an old one."""
    found = []
    for path in root.iterdir():
        hidden = _HIDDEN.fullmatch(path.name)
        if STEP_NAME.fullmatch(path.name):
            name, preference = path.name, 2
        elif hidden:
            name, preference = hidden[1], 1 if hidden[2] == "new" else 0
        else:
            continue
        if is_complete(path):
            found.append((int(name[5:]), preference, name, path))
    return sorted(found)


def read_latest(root: Path) -> str | None:
    """The checkpoint name ``root/latest`` holds (None without the file); refuses anything but the
    name of a folder beside it (``../x``, an absolute path, a symbolic link)."""
    pointer = root / "latest"
    if pointer.is_symlink():
        raise ValueError(f"{pointer} is a symbolic link; it must be a file holding the name of a "
                         f"checkpoint folder in {root}. Delete it to resume from the newest complete checkpoint")
    if not pointer.exists():
        return None
    try:
        name = pointer.read_text().strip()
    except UnicodeDecodeError:
        name = "<binary data>"
    if not STEP_NAME.fullmatch(name):
        shown = name if len(name) <= 80 else name[:77] + "..."
        raise ValueError(f"{pointer} names {shown!r}, which is not a checkpoint folder of this run: it must "
                         f"hold a name like step-00001000, of a folder in {root}. Write the right name into "
                         "it, or delete it to resume from the newest complete checkpoint")
    return name


def _find_checkpoint(root: Path) -> tuple[Path | None, str | None]:
    """The checkpoint to resume from and, when ``latest`` did not name it directly, why this one."""
    name = read_latest(root)
    if name is not None:
        named = root / name
        if named.is_symlink():
            raise ValueError(f"{named} is a symbolic link; a checkpoint must be a folder inside {root}")
        if named.is_dir():  # complete, or damaged by hand: loading then names the missing file
            return named, None
    found = _complete_checkpoints(root)
    copies = [c for c in found if c[2] == name]
    if not (copies or found):
        if name is None:
            return None, None
        raise FileNotFoundError(f"{root / 'latest'} names {name}, which is missing, and {root} holds no other "
                                "complete checkpoint; restore the folder, or start the run over (--overwrite)")
    step, _, _, path = (copies or found)[-1]
    what = f"{root / 'latest'} names {name}, which is missing" if name else f"{root / 'latest'} is missing"
    how = "the complete copy an interrupted save left" if copies else "the newest complete checkpoint"
    return path, f"{what}: using {how}, {path.name} (step {step})"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint to load: the one ``checkpoints/latest`` names, or after an interrupted save the
    complete copy it left (or the newest complete checkpoint), with a warning; None when there is
    none. Read-only: ``recover_checkpoints`` puts things back in place."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    path, note = _find_checkpoint(root)
    if note is not None:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return path


def recover_checkpoints(run_dir: Path) -> list[str]:
    """Repair what an interrupted save left: move the checkpoint ``latest_checkpoint`` would use to
    its ``step-N`` name and point ``latest`` at it, and only then delete the hidden temporaries
    (``.step-*``, ``.latest.*``: each may be a whole checkpoint). Returns what was done, to report."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    path, note = _find_checkpoint(root)
    notes = []
    if note is not None:
        hidden = _HIDDEN.fullmatch(path.name)
        final = root / (hidden[1] if hidden else path.name)
        if path != final:
            if final.exists() or final.is_symlink():  # an incomplete leftover of that step
                _set_aside(final)
            os.replace(path, final)
        atomic_write_text(root / "latest", final.name + "\n")
        notes.append(f"{note}; it is now {final}")
    stale = [p for p in root.iterdir() if p.name.startswith((".step-", ".latest."))]
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if stale:
        notes.append(f"removed {len(stale)} temporary file(s) or folder(s) that an interrupted save left in {root}")
    return notes


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"weights file {path} is missing") from None
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read weights {path}: {e}. The file is corrupt or not a "
                         "safetensors file; resume from an earlier checkpoint") from None
