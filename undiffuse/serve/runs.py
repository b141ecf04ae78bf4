"""The run directories the page shows: found under one root folder, named relative to it, and
resolved only inside it (no ``..``, no absolute name, no symbolic link that leads out).

What a run is, and what the page offers for it, comes from its config.json and, once loaded, from
its pipeline's capabilities (``can_generate``, ``can_restore``, ``takes_labels``, ``takes_prompts``):
a new kind of run shows up without a change here.
"""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from pathlib import Path

from .limits import BadInput

#: A run name: folders below the root, each of letters, digits, '.', '_' or '-' (never '..').
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")
MAX_DEPTH = 3
#: The log lines a poll returns at most (the page asks again for the rest).
LOG_CHUNK = 1 << 20


class Runs:
    """The runs under ``root`` and a small cache of their loaded pipelines."""

    def __init__(self, root: str | Path, cached: int = 4):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise ValueError(f"--runs {root} is not a folder; give the folder that holds your run directories")
        self._cached, self._pipes = cached, OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every folder with a config.json under the root, up to MAX_DEPTH deep, inside the root."""
        found = []
        for config in sorted(self.root.glob("/".join(["*"] * MAX_DEPTH) + "/config.json")) + \
                sorted(self.root.glob("*/config.json")) + sorted(self.root.glob("*/*/config.json")):
            name = config.parent.relative_to(self.root).as_posix()
            if name not in found and NAME.fullmatch(name) and self._inside(config.parent):
                found.append(name)
        return sorted(found)

    def _inside(self, path: Path) -> bool:
        try:
            return path.resolve().is_relative_to(self.root)
        except OSError:
            return False

    def resolve(self, name) -> Path:
        """The directory of run ``name``, refused unless it is a run inside the root."""
        if not isinstance(name, str) or not name:
            raise BadInput("no run named: choose a run from the list")
        if not NAME.fullmatch(name) or ".." in name.split("/"):
            raise BadInput(f"invalid run name {name!r}: a run is named by its folder under the runs folder "
                           "(letters, digits, '.', '_', '-' and '/'; no '..')")
        path = self.root / name
        if not self._inside(path):
            raise BadInput(f"run {name!r} lies outside the runs folder (a symbolic link); it is not served")
        if not (path / "config.json").is_file():
            raise BadInput(f"no run named {name!r} in the runs folder (choose one from the list)", 404)
        return path

    def summary(self, name: str) -> dict:
        """What the list shows: the kind (from config.json), the latest step and loss, the pictures."""
        path = self.resolve(name)
        cfg = read_config(path)
        return {"name": name, "kind": kind_of(cfg), "config": cfg, "pictures": self.pictures(name),
                "has_checkpoint": (path / "checkpoints" / "latest").exists()}

    def pictures(self, name: str) -> list[str]:
        folder = self.resolve(name) / "samples"
        if not folder.is_dir() or not self._inside(folder):
            return []
        return sorted(p.name for p in folder.glob("*.png") if p.is_file() and self._inside(p))

    def picture(self, name: str, file: str) -> Path:
        """A PNG the run wrote (``samples/FILE.png``), only one the listing shows."""
        if not isinstance(file, str) or file not in self.pictures(name):
            raise BadInput(f"run {name!r} has no picture {file!r} in samples/", 404)
        return self.resolve(name) / "samples" / file

    def log(self, name: str, since: int = 0) -> dict:
        """The (step, loss) points of log.jsonl from byte ``since`` on, and where to go on from
        (complete lines only, so a line being written is read at the next poll)."""
        path = self.resolve(name) / "log.jsonl"
        if not path.is_file():
            return {"points": [], "next": 0}
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            since = since if 0 <= since <= size else 0  # a restarted run's log is shorter: start over
            f.seek(since)
            chunk = f.read(LOG_CHUNK)
        end = chunk.rfind(b"\n") + 1
        points = []
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "step" in record and "loss" in record:
                points.append([record["step"], record["loss"]])
        return {"points": points, "next": since + end}

    def pipeline(self, name: str):
        """The run's pipeline (EMA weights), loaded once and again when a newer checkpoint appears."""
        from .. import api
        from ..checkpoint import latest_checkpoint

        path = self.resolve(name)
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise BadInput(f"run {name!r} has no checkpoint yet: wait for training to save one")
        key = (name, str(ckpt))
        with self._lock:
            if key in self._pipes:
                self._pipes.move_to_end(key)
                return self._pipes[key]
        try:
            pipe = api.load(path)
        except (ValueError, FileNotFoundError, OSError, KeyError) as e:  # the loader's messages name the file
            raise BadInput(f"cannot load run {name!r}: {e}") from None
        with self._lock:
            self._pipes[key] = pipe
            while len(self._pipes) > self._cached:
                self._pipes.popitem(last=False)
        return pipe


def read_config(path: Path) -> dict:
    try:
        cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot read {path.name}/config.json: {e}") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"{path.name}/config.json does not hold a JSON object")
    return cfg


def kind_of(cfg: dict) -> str:
    """A short description from config.json alone (no loading): the process, and what it is
    conditioned on."""
    from ..cold import is_cold

    process = cfg.get("process") if isinstance(cfg.get("process"), dict) else {}
    name = str(process.get("type", "?"))
    parts = [f"cold {name}" if is_cold(process) else name]
    if cfg.get("latent"):
        parts.append("latent")
    if cfg.get("text"):
        parts.append("text")
    if (cfg.get("data") or {}).get("num_classes"):
        parts.append("classes")
    return ", ".join(parts)


def capabilities(pipe) -> dict:
    """What the page offers for a loaded run: generate and/or restore, a class or a prompt."""
    return {"can_generate": bool(pipe.can_generate), "can_restore": bool(pipe.can_restore),
            "takes_labels": bool(pipe.takes_labels), "takes_prompts": bool(pipe.takes_prompts),
            "num_classes": pipe.num_classes, "class_names": pipe.class_names, "shape": list(pipe.shape)}
