"""Never lose a run (undiffuse.rundir, undiffuse.checkpoint, Trainer.resume / fit, `undiffuse train`).

Covers: a directory holding a run is refused without --resume / --overwrite (CLI, API, `make demo`);
a kill at any point of a save is recovered on the next resume (bitwise the right weights, temporaries
removed); fsync before `latest` moves; --resume with nothing to resume warns; a `latest` naming anything
but a checkpoint folder, and symbolic links where training writes, are refused; a run stopped before
its first log line finishes cleanly; the divergence message says whether a checkpoint is kept.
Everything runs on the tiny U-Net on 8x8 digits (float32, one thread): a step takes milliseconds.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

import undiffuse
from undiffuse import checkpoint as checkpoint_module
from undiffuse.checkpoint import CHECKPOINT_FILES, is_complete, latest_checkpoint, load_weights
from undiffuse.cli import main
from undiffuse.config import TrainConfig
from undiffuse.data import TensorData
from undiffuse.rundir import RunExistsError, append_log
from undiffuse.trainer import NonFiniteLossError, Trainer

from helpers_cli import assert_clean_error
from helpers_resume import data, finished, run_cfg  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
TINY = ["--preset", "digits", "--net", "tiny", "--max-train-steps", "4", "--batch-size", "8", "--num-samples", "4",
        "--sample-steps", "2"]
S2, S4 = "step-00000002", "step-00000004"


class Killed(BaseException):
    """Stands in for a kill: a BaseException, so no `except Exception` clean-up runs."""


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished 4-step run, for the test to damage."""
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def weights(folder: Path, name: str = "model") -> dict[str, torch.Tensor]:
    return load_weights(folder / f"{name}.safetensors")


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_when(monkeypatch, target, name: str, condition) -> None:
    """Make ``target.name(*args)`` raise Killed, before doing anything, when ``condition(*args)``."""
    real = getattr(target, name)

    def call(*args, **kwargs):
        if condition(*args):
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, call)


def resume_quietly(cfg: TrainConfig, data: TensorData) -> Trainer:
    """A Trainer resumed from cfg.out that must not need to warn about anything."""
    trainer = Trainer(cfg, data=data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer.resume()
    return trainer


# --- 1. an existing run is never clobbered by accident --------------------------------------------


def test_training_into_an_existing_run_is_refused_without_resume_or_overwrite(run, data):
    before = digest(run)
    needles = r"already holds a run.*--resume.*new --out.*--overwrite"
    with pytest.raises(RunExistsError, match=needles):
        Trainer(run_cfg(run), data=data).fit(progress=False)
    with pytest.raises(RunExistsError, match=needles):
        undiffuse.train(run_cfg(run), progress=False)
    # A run killed before its first checkpoint is a run too: its config.json and log stay.
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(RunExistsError, match=r"\(config\.json, log\.jsonl\)"):
        Trainer(run_cfg(run), data=data).fit(progress=False)
    assert digest(run) == {k: v for k, v in before.items() if not k.startswith("checkpoints")}
    with pytest.raises(ValueError, match="is a file, not a folder"):
        undiffuse.train(run_cfg(run / "config.json"), progress=False)


def test_overwrite_deletes_the_old_run_and_starts_over(run, data):
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="--resume continues.*--overwrite deletes it: pass one of them"):
        Trainer(run_cfg(run), data=data, overwrite=True).resume()
    fresh = Trainer(run_cfg(run, max_train_steps=2), data=data, overwrite=True)
    fresh.fit(progress=False)
    assert sorted(os.listdir(run / "checkpoints")) == ["latest", S2]
    assert [line.count('"step": ') for line in (run / "log.jsonl").read_text().splitlines()] == [1, 1]
    assert (run / "notes.txt").read_text() == "mine"  # only what training writes is deleted
    assert_state_equal(undiffuse.load(run).denoiser.state_dict(), fresh.ema.state_dict())
    fresh.fit(progress=False)  # a second fit continues its own run: nothing deleted again
    assert latest_checkpoint(run).name == S2 and (run / "checkpoints" / S2).is_dir()


def test_cli_refuses_to_train_into_a_run_and_overwrite_starts_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = digest(out / "checkpoints")
    capsys.readouterr()
    assert_clean_error(main(["train", *TINY, "--out", str(out)]), capsys.readouterr().err,
                       "already holds a run", "--resume", "new --out", "--overwrite")
    assert_clean_error(main(["train", *TINY, "--resume", "--overwrite", "--out", str(out)]),
                       capsys.readouterr().err, "pass one of them")
    assert digest(out / "checkpoints") == before
    assert main(["train", *TINY, "--max-train-steps", "2", "--overwrite", "--out", str(out)]) == 0
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", S2]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_resumes_an_existing_run_instead_of_training_it_again(tmp_path):
    shutil.copy(REPO / "Makefile", tmp_path)

    def demo_command() -> list[str]:
        # Run as a top-level make: under `make test` the inherited MAKELEVEL/MAKEFLAGS would make
        # it print "Entering directory" lines around the commands.
        env = {k: v for k, v in os.environ.items() if k not in {"MAKELEVEL", "MAKEFLAGS", "MFLAGS"}}
        result = subprocess.run(["make", "--no-print-directory", "-n", "demo", "STAMP=", "PY=python"],
                                cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
        return result.stdout.split()

    assert demo_command() == ["python", "-m", "undiffuse", "train"]
    (tmp_path / "runs" / "mnist").mkdir(parents=True)
    (tmp_path / "runs" / "mnist" / "config.json").write_text("{}")
    assert demo_command() == ["python", "-m", "undiffuse", "train", "--resume"]


# --- 2. a kill while saving is recovered automatically ----------------------------------------------


@pytest.mark.parametrize("kill_at, survivor", [
    ("setting the old copy aside", "old"),
    ("renaming the new copy in", "new"),
    ("moving latest", "new"),
    ("deleting the old copy", "new"),
])
def test_a_kill_while_saving_a_step_again_is_recovered(run, data, monkeypatch, kill_at, survivor):
    # Re-saving step 4 (as a resume of a finished run, or of a run killed after renaming step 4 in,
    # does); the new weights differ from the old so that the test sees which copy survives.
    root = run / "checkpoints"
    old = {name: weights(root / S4, name) for name in ("model", "ema")}
    trainer = resume_quietly(run_cfg(run), data)
    with torch.no_grad():
        for p in trainer.denoiser.parameters():
            p.add_(1.0)
    new = {"model": trainer.denoiser.state_dict(), "ema": trainer.ema.state_dict()}
    expected = {"old": old, "new": new}[survivor]
    if kill_at == "deleting the old copy":
        kill_when(monkeypatch, checkpoint_module.shutil, "rmtree", lambda path, *a: ".old-" in Path(path).name)
    else:
        target = {"setting the old copy aside": lambda dst: Path(dst).name.startswith(f".{S4}.old-"),
                  "renaming the new copy in": lambda dst: Path(dst) == root / S4,
                  "moving latest": lambda dst: Path(dst) == root / "latest"}[kill_at]
        kill_when(monkeypatch, checkpoint_module.os, "replace", lambda src, dst: target(dst))
    with pytest.raises(Killed):
        trainer.save()
    monkeypatch.undo()
    assert [p for p in os.listdir(root) if p.startswith(".")]  # the kill left hidden folders

    with warnings.catch_warnings():  # read-only: finds the complete copy (with a warning) and leaves it
        warnings.simplefilter("ignore")
        assert_state_equal(undiffuse.load(run, weights="model").denoiser.state_dict(), expected["model"])
    resumed = Trainer(run_cfg(run), data=data)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert resumed.resume() and resumed.step == 4
    assert_state_equal(resumed.denoiser.state_dict(), expected["model"])
    assert_state_equal(resumed.ema.state_dict(), expected["ema"])
    # Put back in place, temporaries gone: the next resume has nothing to say.
    assert sorted(os.listdir(root)) == ["latest", S2, S4]
    assert (root / "latest").read_text().strip() == S4
    resume_quietly(run_cfg(run), data)


def test_resume_after_a_kill_between_rename_and_latest_matches_an_uninterrupted_run(tmp_path, data,
                                                                                     monkeypatch):
    straight = Trainer(run_cfg(tmp_path / "straight", max_train_steps=6), data=data)
    straight.fit(progress=False)
    run, root = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    # The save of step 4 renames step-00000004 in, and is killed before `latest` moves to it.
    kill_when(monkeypatch, checkpoint_module.os, "replace",
              lambda src, dst: Path(dst) == root / "latest" and (root / S4).exists())
    with pytest.raises(Killed):
        Trainer(run_cfg(run, max_train_steps=6), data=data).fit(progress=False)
    monkeypatch.undo()
    assert (root / "latest").read_text().strip() == S2 and is_complete(root / S4)

    resumed = Trainer(run_cfg(run, max_train_steps=6), data=data)
    with pytest.warns(RuntimeWarning, match="removed 1 temporary"):  # the kill's .latest.* file
        assert resumed.resume() and resumed.step == 2  # `latest` decides: step 4 is trained again
    resumed.fit(progress=False)  # saves step 4 over the killed run's copy, then step 6
    assert_state_equal(resumed.denoiser.state_dict(), straight.denoiser.state_dict())
    assert_state_equal(resumed.ema.state_dict(), straight.ema.state_dict())
    assert sorted(os.listdir(root)) == ["latest", S4, "step-00000006"]


def test_leftovers_of_a_kill_while_writing_are_removed_and_latest_wins(run, data):
    root = run / "checkpoints"
    expected = weights(root / S4)
    half = root / ".step-00000006.new-abc123"  # killed while writing step 6: no state.json yet
    half.mkdir()
    shutil.copy(root / S4 / "model.safetensors", half)
    shutil.copytree(root / S2, root / ".step-00000004.old-1a2b3c4d")  # complete, but latest is intact
    (root / ".latest.x7y8z9").write_text("step-00000006\n")
    resumed = Trainer(run_cfg(run), data=data)
    with pytest.warns(RuntimeWarning, match="removed 3 temporary"):
        assert resumed.resume() and resumed.step == 4
    assert_state_equal(resumed.denoiser.state_dict(), expected)
    assert sorted(os.listdir(root)) == ["latest", S2, S4]


@pytest.mark.parametrize("damage, step", [("none", 4), ("step 4 lacks state.json", 2),
                                          ("step 4 only as a hidden new copy", 4)])
def test_missing_latest_resumes_from_the_newest_complete_checkpoint(run, data, damage, step):
    # A first save killed between renaming its folder in and writing `latest` leaves no pointer.
    root = run / "checkpoints"
    expected = weights(root / f"step-{step:08d}")
    (root / "latest").unlink()
    if damage == "step 4 lacks state.json":
        (root / S4 / "state.json").unlink()
    elif damage == "step 4 only as a hidden new copy":
        (root / S4).rename(root / f".{S4}.new-q1w2e3")
    resumed = Trainer(run_cfg(run), data=data)
    with pytest.warns(RuntimeWarning, match=r"latest is missing: using the newest complete checkpoint"):
        assert resumed.resume() and resumed.step == step
    assert_state_equal(resumed.denoiser.state_dict(), expected)
    assert (root / "latest").read_text().strip() == f"step-{step:08d}"
    assert not [p for p in os.listdir(root) if p.startswith(".")]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_checkpoint_files_and_folder_reach_the_disk_before_latest_moves(tmp_path, data, monkeypatch):
    trainer = Trainer(run_cfg(tmp_path), data=data)
    root = (tmp_path / "checkpoints").resolve()
    events: list[tuple[str, Path]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}"))))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(dst).resolve()))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    trainer.save()
    monkeypatch.undo()
    moved_in = events.index(("replace", root / "step-00000000"))
    latest = events.index(("replace", root / "latest"))
    synced = [path for kind, path in events[:moved_in] if kind == "fsync"]
    for name in CHECKPOINT_FILES:  # state.json through its own temporary file
        assert any(p.parent.name.startswith(".step-00000000.new-") and p.name.lstrip(".").startswith(name)
                   for p in synced), name
    assert ("fsync", root) in events[moved_in:latest]  # the rename itself, before latest names it


# --- 3. --resume with nothing to resume -----------------------------------------------------------------


def test_resume_with_nothing_to_resume_warns_and_trains_from_step_0(tmp_path, data, capsys):
    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match=r"nothing to resume in .*run \(no checkpoint.*step 0"):
        assert main(["train", *TINY, "--max-train-steps", "2", "--resume", "--out", str(out)]) == 0
    assert "resumed" not in capsys.readouterr().out and latest_checkpoint(out).name == S2
    shutil.rmtree(out / "checkpoints")  # as if killed before its first checkpoint
    with pytest.warns(RuntimeWarning, match="nothing to resume"):
        pipe = undiffuse.train(run_cfg(out, max_train_steps=2), resume=True, progress=False)
    assert pipe.run_dir == out and latest_checkpoint(out).name == S2


# --- 4. nothing is read or written outside the run directory -------------------------------------------


def _outside_copy(run: Path, where: Path) -> Path:
    return Path(shutil.copytree(run / "checkpoints" / S4, where))


@pytest.mark.parametrize("pointer", ["../../outside", "ABSOLUTE", "step-4", "step-00000004/../../../outside", ""])
def test_latest_naming_anything_but_a_checkpoint_folder_is_refused(run, data, pointer):
    root = run / "checkpoints"
    if pointer == "ABSOLUTE":
        pointer = str(_outside_copy(run, run.parent / "elsewhere"))
    elif pointer:  # a complete checkpoint where the pointer leads: the old code loaded it
        _outside_copy(run, (root / pointer).resolve())
    (root / "latest").write_text(pointer + "\n")
    with pytest.raises(ValueError, match="which is not a checkpoint folder of this run.*step-00001000"):
        Trainer(run_cfg(run), data=data).resume()
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        undiffuse.load(run)


def test_symbolic_links_in_checkpoints_are_refused(run, data):
    root = run / "checkpoints"
    outside = _outside_copy(run, run.parent / "outside")
    shutil.rmtree(root / S4)
    (root / S4).symlink_to(outside)
    with pytest.raises(ValueError, match=r"step-00000004 is a symbolic link"):
        Trainer(run_cfg(run), data=data).resume()
    (root / S4).unlink()
    shutil.copytree(outside, root / S4)
    (root / "latest").unlink()
    (root / "latest").symlink_to(run.parent / "pointer")
    (run.parent / "pointer").write_text(S4)
    with pytest.raises(ValueError, match=r"latest is a symbolic link"):
        undiffuse.load(run)


@pytest.mark.parametrize("name", ["log.jsonl", "samples", "samples/final.png"])
def test_training_never_writes_through_a_symbolic_link(run, data, capsys, name):
    outside = run.parent / "outside"
    link = run / name
    if name == "samples":
        outside.mkdir()
        shutil.rmtree(link)
    else:
        outside.write_text("not yours\n")
        link.unlink()
    link.symlink_to(outside)
    before = digest(run.parent / "outside") if outside.is_dir() else outside.read_text()
    with pytest.raises(ValueError, match=f"{name} is a symbolic link.*writes only inside"):
        Trainer(run_cfg(run, max_train_steps=6), data=data).resume()
    with pytest.raises(ValueError, match="is a symbolic link"):
        Trainer(run_cfg(run, max_train_steps=6), data=data, overwrite=True).fit(progress=False)
    code = main(["train", *TINY, "--max-train-steps", "6", "--resume", "--out", str(run)])
    assert_clean_error(code, capsys.readouterr().err, "is a symbolic link", "another --out")
    assert (digest(outside) if outside.is_dir() else outside.read_text()) == before
    if name == "log.jsonl":  # a link made after the checks is not followed either
        with pytest.raises(OSError):
            append_log(link, {"step": 5})
        assert outside.read_text() == before


# --- 5. a run stopped before its first log line; 6. what a divergence keeps ------------------------------


def test_a_run_stopped_before_its_first_log_line_finishes_cleanly(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--max-minutes", "0", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no loss curve: training stopped at step 0" in printed
    assert "stopped at step 0 of 4" in printed and "--resume" in printed
    assert latest_checkpoint(out).name == "step-00000000" and not (out / "log.jsonl").exists()
    assert main(["train", *TINY, "--resume", "--out", str(out)]) == 0
    assert f"resumed {out} at step 0" in capsys.readouterr().out
    assert latest_checkpoint(out).name == S4 and (out / "samples" / "loss.png").is_file()


def poisoned(data: TensorData) -> TensorData:
    return TensorData(torch.full_like(data.x, float("nan")), data.labels, data.num_classes, data.name,
                      data.class_names)


def test_divergence_says_whether_a_checkpoint_is_kept(run, data):
    fresh = Trainer(run_cfg(run.parent / "fresh"), data=poisoned(data))
    with pytest.raises(NonFiniteLossError, match=r"at step 1\. No checkpoint was written before it "
                                                 r"\(the first was due at step 2\), so nothing") as info:
        fresh.fit(progress=False)
    assert "last good checkpoint" not in str(info.value) and "--overwrite" in str(info.value)
    assert latest_checkpoint(run.parent / "fresh") is None
    resumed = Trainer(run_cfg(run, max_train_steps=8), data=poisoned(data))
    assert resumed.resume()
    with pytest.raises(NonFiniteLossError, match=r"at step 5\. The last good checkpoint, step 4 in .*"
                                                 r"checkpoints, is kept"):
        resumed.fit(progress=False)
