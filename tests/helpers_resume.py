"""The stop-and-resume experiment shared by the bitwise-resume tests (plain, cold and text runs)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from undiffuse.config import TrainConfig
from undiffuse.data import TensorData, load_dataset
from undiffuse.trainer import Trainer


def run_cfg(out: Path, **changes) -> TrainConfig:
    """4 steps of the tiny U-Net on 8x8 digits, checkpoints at steps 2 and 4."""
    return TrainConfig(data="digits", net="tiny", max_train_steps=4, batch_size=8, lr=2e-3, warmup_steps=2,
                       out=str(out), log_every=1, checkpoint_every=2, sample_every=0, num_samples=4,
                       sample_steps=2, bf16=False).updated(**changes)


@pytest.fixture(scope="module")
def data() -> TensorData:
    return load_dataset("digits", n=64, seed=0)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data) -> Path:
    """A finished run of ``run_cfg`` (4 steps), for tests to copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    Trainer(run_cfg(out), data=data).fit(progress=False)
    return out


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
