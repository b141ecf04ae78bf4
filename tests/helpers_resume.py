"""The stop-and-resume experiment shared by the bitwise-resume tests (plain, cold and text runs)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from undiffuse.config import TrainConfig
from undiffuse.trainer import Trainer


class Crash(Exception):
    pass


def straight_and_resumed(make_cfg: Callable[[Path], TrainConfig], root: Path, data, *, crash_at: int = 5,
                         resume_at: int = 4) -> tuple[Trainer, Trainer]:
    """An uninterrupted run, and a run killed after step ``crash_at`` then resumed from its checkpoint
    at ``resume_at`` (after scrambling torch's global RNG, which the resume must restore) and
    finished; the callers compare the two."""
    straight = Trainer(make_cfg(root / "straight"), data=data)
    straight.fit(progress=False)

    def crash(trainer, record):
        if record["step"] == crash_at:  # after the checkpoint at resume_at, before the next
            raise Crash

    first = Trainer(make_cfg(root / "resumed"), data=data)
    with pytest.raises(Crash):
        first.fit(progress=False, on_log=crash)
    torch.manual_seed(1234)  # whatever happened to the global RNG since, resume must restore it
    second = Trainer(make_cfg(root / "resumed"), data=data)
    assert second.resume() and second.step == resume_at
    second.fit(progress=False)
    return straight, second
