"""The one atomic writer (``checkpoint.atomic_write``) behind run files, caches and pictures: a write
that fails half-way leaves the previous file intact and no temporary file behind, and a finished
write reaches the disk (fsync) before it replaces the old file."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from undiffuse import checkpoint, viz
from undiffuse.checkpoint import atomic_write, atomic_write_text


def test_a_failure_mid_write_leaves_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old weights")
    seen = []

    def half_then_fail(tmp: str) -> None:
        seen.append(Path(tmp))
        Path(tmp).write_bytes(b"new wei")  # half of the new file, then the disk fills up
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old weights"
    assert seen[0].parent == tmp_path  # the temporary file sat beside the target (same file system)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_a_failed_fsync_of_text_leaves_the_old_file_and_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    """An I/O error when flushing to disk: the old text stays and the temporary file is removed (the
    text writer once left its temporary file behind)."""
    target = tmp_path / "latest"
    target.write_text("step-00000008\n")

    def failing_fsync(fd: int) -> None:
        raise OSError("Input/output error")

    monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_text(target, "step-00000009\n")
    assert target.read_text() == "step-00000008\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest"]


def test_the_new_file_is_fsynced_before_it_replaces_the_old(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(checkpoint.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    path = atomic_write_text(tmp_path / "new" / "dir" / "state.json", "{}\n")
    assert path == tmp_path / "new" / "dir" / "state.json" and path.read_text() == "{}\n"
    # The file's data, then the rename, then the folder entry (best effort; at least the file's).
    assert events[:2] == ["fsync", "replace"]


def test_pictures_go_through_the_same_writer_and_stay_readable(tmp_path: Path, monkeypatch) -> None:
    """viz once wrote PNGs with its own copy of the writer, which never fsynced them."""
    calls = []
    real = checkpoint.fsync_file
    monkeypatch.setattr(checkpoint, "fsync_file", lambda p: (calls.append(Path(p)), real(p))[1])
    path = viz.save_grid(torch.zeros(4, 1, 8, 8), tmp_path / "grid.png")
    assert len(calls) == 1 and calls[0].parent == tmp_path
    assert stat.S_IMODE(path.stat().st_mode) == viz.PNG_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
