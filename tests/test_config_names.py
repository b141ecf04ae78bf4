"""TrainConfig's renamed field (``steps`` -> ``max_train_steps``): the old name still works for one
release with a FutureWarning, and a run saved under the old name (config.json "train": {"steps": ...})
loads, samples and resumes exactly as before, quietly."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import undiffuse
from undiffuse.config import PRESETS, RENAMED, TrainConfig, preset, upgrade_saved
from undiffuse.run_files import read_run_config
from undiffuse.trainer import Trainer

from helpers_resume import data, finished, run_cfg  # noqa: F401 (fixtures)

DEPRECATED = "TrainConfig field 'steps' is deprecated .* use 'max_train_steps'"


def make_old(run: Path, at_step: int | None = None) -> dict:
    """Turn a run into one saved before the rename: "train" holds "steps"; with ``at_step``, as if it
    had stopped at that checkpoint (later checkpoints gone, latest pointing at it). Returns "train"."""
    path = run / "config.json"
    cfg = json.loads(path.read_text())
    train = cfg["train"]
    train = {("steps" if k == "max_train_steps" else k): v for k, v in train.items()}  # the old key order
    cfg["train"] = train
    path.write_text(json.dumps(cfg, indent=2))
    if at_step is not None:
        for ckpt in (run / "checkpoints").glob("step-*"):
            if int(ckpt.name.split("-")[1]) > at_step:
                shutil.rmtree(ckpt)
        (run / "checkpoints" / "latest").write_text(f"step-{at_step:08d}\n")
    return train


def sample(run: Path) -> torch.Tensor:
    return undiffuse.load(run).sample(4, num_inference_steps=2, seed=3, class_labels=[0, 1, 2, 3])


def test_old_keyword_and_attribute_warn_and_still_work():
    with pytest.warns(FutureWarning, match=DEPRECATED):
        cfg = TrainConfig(steps=12)
    assert cfg.max_train_steps == 12 and cfg == TrainConfig(max_train_steps=12)
    with pytest.warns(FutureWarning, match=DEPRECATED):
        assert preset("digits").updated(steps=5) == preset("digits").updated(max_train_steps=5)
    with pytest.warns(FutureWarning, match="TrainConfig.steps is deprecated"):
        assert cfg.steps == 12
    with pytest.warns(FutureWarning, match="TrainConfig.steps is deprecated"):
        cfg.steps = 13
    assert cfg.max_train_steps == 13
    with pytest.raises(ValueError, match="'steps' is the deprecated name of 'max_train_steps'"):
        TrainConfig(steps=1, max_train_steps=2)
    with pytest.raises(ValueError, match="unknown config fields"):
        TrainConfig().updated(stpes=3)
    assert RENAMED == {"steps": "max_train_steps"}
    assert PRESETS["digits"].max_train_steps == 2000 and PRESETS["cold-blur"].max_train_steps == 3500


def test_the_old_name_counts_for_validation_too():
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match=r"max_train_steps \(--max-train-steps\) "
                                                                      "must be >= 1"):
        TrainConfig(steps=0).validate()


def test_a_saved_config_reads_under_the_new_name_quietly(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    old = make_old(run)
    assert "steps" in old and "max_train_steps" not in old
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading an old run is no reason to warn
        train = read_run_config(run)["train"]
    assert train["max_train_steps"] == 4 and "steps" not in train
    assert upgrade_saved({"steps": 7, "lr": 0.1}) == {"lr": 0.1, "max_train_steps": 7}
    both = json.loads((run / "config.json").read_text())
    both["train"]["max_train_steps"] = 4
    (run / "config.json").write_text(json.dumps(both))
    with pytest.raises(ValueError, match="config.json: its 'train' entry 'steps' is the deprecated name"):
        read_run_config(run)


def test_an_old_run_samples_exactly_as_before(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = sample(run)
    make_old(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert torch.equal(sample(run), before)


def test_an_old_run_resumes_bitwise_and_to_more_steps(finished, tmp_path, data):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    make_old(run, at_step=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        resumed = Trainer(run_cfg(run), data=data)
        assert resumed.resume() and resumed.step == 2
        resumed.fit(progress=False)
    assert torch.equal(sample(run), sample(finished))  # the old run's 2 + 2 steps are the finished 4
    assert json.loads((run / "config.json").read_text())["train"]["max_train_steps"] == 4
    # Another old run, continued past its end with a larger --max-train-steps.
    longer = tmp_path / "longer"
    shutil.copytree(finished, longer)
    make_old(longer)
    trainer = Trainer(run_cfg(longer, max_train_steps=6), data=data)
    assert trainer.resume() and trainer.step == 4
    trainer.fit(progress=False)
    assert trainer.step == 6
    assert (longer / "checkpoints" / "latest").read_text().strip() == "step-00000006"


def test_an_old_run_still_refuses_other_maths(finished, tmp_path, data):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    make_old(run)
    with pytest.raises(ValueError, match=r"settings differ from the saved run \(lr\)"):
        Trainer(run_cfg(run, lr=5e-3, max_train_steps=6), data=data).resume()
