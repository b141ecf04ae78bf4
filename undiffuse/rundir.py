"""Run-directory safety: training never loses a run by accident and never writes outside ``--out``.

* A directory that holds a run (``config.json``, ``log.jsonl`` or checkpoints) is continued only
  with ``--resume`` (``resume=True``) and started over only with ``--overwrite``
  (``overwrite=True``), which first deletes what training writes (TRAIN_OUTPUTS; other files
  stay). Without either, training refuses: ``RunExistsError``.
* What training writes (TRAIN_OUTPUTS, and the entries of ``checkpoints/`` and ``samples/``) must
  not be a symbolic link: writing through one would write outside the run directory.
* A resumed run may change when to stop and what to write (RESUMABLE_CHANGES), never the maths.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from .config import TrainConfig
from .nets import config_differences
from .run_files import read_run_config
from .cold.prior import PRIOR_FILE

#: Everything ``undiffuse train`` writes in a run directory: what --overwrite deletes.
TRAIN_OUTPUTS = ("config.json", "log.jsonl", "checkpoints", "samples", PRIOR_FILE)

#: Settings a resumed run may change: when to stop and what to write, never the maths.
RESUMABLE_CHANGES = {"max_train_steps", "out", "max_minutes", "sample_every", "checkpoint_every", "log_every",
                     "num_samples", "sampler", "sample_steps", "guidance", "device", "compile",
                     "channels_last"}


class RunExistsError(ValueError):
    """``--out`` holds a run, and neither ``--resume`` nor ``--overwrite`` says what to do with it."""


def existing_run(out: Path) -> list[str]:
    """What marks ``out`` as holding a run: config.json, log.jsonl, a non-empty checkpoints/."""
    found = [name for name in ("config.json", "log.jsonl") if (out / name).exists()]
    checkpoints = out / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        found.append("checkpoints/")
    return found


def refuse_symlinks(out: Path) -> None:
    """Refuse a symbolic link where training writes (see the module docstring)."""
    links = [out / name for name in TRAIN_OUTPUTS if (out / name).is_symlink()]
    for folder in (out / "checkpoints", out / "samples"):
        if folder.is_dir() and not folder.is_symlink():
            links += sorted(p for p in folder.iterdir() if p.is_symlink())
    if links:
        raise ValueError(f"{links[0]} is a symbolic link (to {os.readlink(links[0])}): training writes only "
                         f"inside its run directory {out}, and writing through the link would write elsewhere. "
                         "Replace the link with a real file or folder (or delete it), or choose another --out")


def check_run_dir(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse, before anything is written, to train into ``out`` in a way that would lose the run
    there or write outside ``out``."""
    out = Path(out)
    if resume and overwrite:
        raise ValueError(f"--resume continues the run in {out} and --overwrite deletes it: pass one of them")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder; choose another --out")
    refuse_symlinks(out)
    found = existing_run(out)
    if found and not (resume or overwrite):
        raise RunExistsError(
            f"{out} already holds a run ({', '.join(found)}). To continue it, add --resume (Python: "
            f"resume=True); to keep it and start another, choose a new --out; to delete it and start "
            f"over in {out}, add --overwrite (Python: overwrite=True)")


def clear_run(out: Path) -> None:
    """``--overwrite``: delete what training writes in ``out`` (TRAIN_OUTPUTS); other files stay."""
    for name in TRAIN_OUTPUTS:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def append_log(path: Path, record: dict) -> None:
    """Append one JSON line to ``path``; O_NOFOLLOW: never through a symbolic link."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(record) + "\n")


def check_resumable(run_dir: Path, cfg: TrainConfig, net: torch.nn.Module) -> None:
    """Refuse to resume the run in ``run_dir`` with other maths: settings outside RESUMABLE_CHANGES,
    or a network that differs from the saved one."""
    saved = read_run_config(run_dir)  # checked (a bad entry is an error naming it), under today's names
    # Compare in JSON form: config.json turns tuples (as in UNET_PRESETS) into lists. A field
    # that an older run's config lacks counts as having its default value.
    current = json.loads(json.dumps(asdict(cfg)))
    defaults = json.loads(json.dumps(asdict(TrainConfig())))
    changed = {k for k in current
               if k not in RESUMABLE_CHANGES and saved["train"].get(k, defaults[k]) != current[k]}
    if changed:
        raise ValueError(f"cannot resume {run_dir}: settings differ from the saved run "
                         f"({', '.join(sorted(changed))}); use the same settings or a new --out")
    if cfg.autoencoder is not None:  # a latent run: the same autoencoder weights, or other latents
        from .latent.runs import load_recorded_autoencoder

        load_recorded_autoencoder(saved.get("latent"), run_dir)
    # A preset that gained a parameter-free setting since would load the old weights silently.
    diff = config_differences(saved.get("net"), net)
    if diff:
        raise ValueError(f"cannot resume {run_dir}: the network differs from the saved run's ({diff}); "
                         "its preset has changed since the run was saved. The run still loads as it was "
                         "(`undiffuse.load`, `undiffuse sample`); to train on, start a new run with --out")
