"""Tests for the command line (`python -m undiffuse train|sample`).

The end-to-end tests run the real entry point in a subprocess on the 8x8 digits with the tiny
U-Net (a few steps, a few sampler steps); error cases that need no fresh interpreter call
``undiffuse.cli.main`` in-process, which returns the exit code and prints to stderr.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import undiffuse
from undiffuse.cli import main
from undiffuse.config import preset
from undiffuse.trainer import Trainer
from undiffuse.viz import save_grid

from helpers_cli import assert_clean_error, assert_png

TINY = ["--preset", "digits", "--net", "tiny", "--max-train-steps", "4", "--batch-size", "8", "--num-samples", "4",
        "--sample-steps", "2"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "undiffuse", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)






@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> Path:
    """`undiffuse train` on tiny settings, in a subprocess; returns the run directory."""
    cwd = tmp_path_factory.mktemp("cli")
    result = run_cli("train", *TINY, "--out", "run", cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "trained 4 steps" in result.stdout
    return cwd / "run"


# --- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command, flags", [
    ("train", ["--preset", "--resume", "--data", "--net", "--max-train-steps", "--steps", "--batch-size", "--lr",
               "--out", "--seed", "--sampler", "--bf16", "--no-bf16", "--max-minutes", "--guidance"]),
    ("sample", ["--run", "--sampler", "--num-inference-steps", "--n", "--seed", "--class", "--out", "--trajectory",
                "--eta", "--guidance", "--spacing"]),
])
def test_help_lists_the_key_flags(tmp_path, command, flags):
    result = run_cli(command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: undiffuse {command}")
    for flag in flags:
        assert flag in result.stdout, flag


# --- train and sample end to end ----------------------------------------------------------------------


def test_train_writes_a_complete_run_directory(cli_run):
    run = cli_run
    config = json.loads((run / "config.json").read_text())
    train = config["train"]
    assert (train["data"], train["net"], train["max_train_steps"], train["batch_size"]) == ("digits", "tiny", 4, 8)
    assert (train["num_samples"], train["sample_steps"]) == (4, 2)
    assert config["data"]["shape"] == [1, 8, 8] and config["data"]["num_classes"] == 10
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000004"
    assert sorted(p.name for p in (run / "checkpoints" / "step-00000004").iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert records and records[-1]["step"] == 4
    for name in ("final.png", "trajectory.png", "loss.png"):
        width, height = assert_png(run / "samples" / name)
        assert width > 32 and height > 32, name


def test_sample_writes_a_grid_and_a_trajectory(cli_run, tmp_path):
    result = run_cli("sample", "--run", str(cli_run), "--n", "4", "--num-inference-steps", "3", "--out", "grid.png",
                     "--trajectory", "traj.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 samples" in result.stdout and "grid.png" in result.stdout and "traj.png" in result.stdout
    assert_png(tmp_path / "grid.png")
    assert_png(tmp_path / "traj.png")


@pytest.fixture(scope="module")
def class_run(tmp_path_factory) -> Path:
    """A 40-step tiny digits run (trained in-process, ~1 s): long enough that the class label changes
    the 8-bit samples (after cli_run's 4 steps every class gives the same PNG)."""
    out = tmp_path_factory.mktemp("class") / "run"
    cfg = preset("digits").updated(net="tiny", max_train_steps=40, batch_size=8, num_samples=4, sample_steps=2,
                                   out=str(out), bf16=False)
    Trainer(cfg).fit(progress=False)
    return out


def png_pixels(path: Path) -> np.ndarray:
    assert_png(path)
    with Image.open(path) as img:
        return np.asarray(img).astype(np.int16)


def test_sample_with_ddpm_and_a_class(class_run, tmp_path):
    result = run_cli("sample", "--run", str(class_run), "--n", "4", "--num-inference-steps", "3", "--sampler", "ddpm",
                     "--class", "3", "--seed", "5", "--out", "three.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = png_pixels(tmp_path / "three.png")
    pipe = undiffuse.load(class_run)

    def reference(label: int) -> np.ndarray:
        """Pipeline.sample with the CLI's settings, written by the CLI's own grid code (same quantisation)."""
        x = pipe.sample(4, sampler="ddpm", num_inference_steps=3, seed=5, class_labels=label)
        return png_pixels(save_grid(x, tmp_path / f"class-{label}.png"))

    # The same call at the same shapes, but in another process (perhaps with another thread count): a value
    # on an 8-bit rounding boundary may land one level apart; nothing more.
    want = reference(3)
    assert got.shape == want.shape  # the grid of one class: 2 x 2 (one column per class without --class)
    assert np.abs(got - want).max() <= 1
    # ... and --class is not ignored: class 5 moves over a quarter of the grid's pixels by more than a level
    # (measured: 0.57 of them, the white padding included).
    assert (np.abs(got - reference(5)) > 1).mean() > 0.25


def test_unknown_sampler_is_a_clear_error(cli_run, tmp_path):
    result = run_cli("sample", "--run", str(cli_run), "--n", "4", "--num-inference-steps", "3", "--sampler", "eulerr",
                     "--out", "x.png", cwd=tmp_path)
    assert_clean_error(result.returncode, result.stderr, "unknown sampler 'eulerr'", "ddim", "dpmpp_2m")
    assert not (tmp_path / "x.png").exists()
    result = run_cli("sample", "--run", str(cli_run), "--n", "4", "--num-inference-steps", "3", "--sampler", "heun",
                     "--option", "snr=0.1", "--out", "x.png", cwd=tmp_path)
    assert_clean_error(result.returncode, result.stderr, "heun has no option snr", "s_churn")


def test_samplers_listing_and_every_sampler_from_the_cli(cli_run, tmp_path):
    from undiffuse.samplers import SAMPLERS

    listing = run_cli("samplers", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert set(rows) == set(SAMPLERS)
    assert "2 N - 1" in rows["heun"] and "Algorithm 1" in rows["heun"] and " 3 " in rows["dpmpp_3m"]
    result = run_cli("sample", "--run", str(cli_run), "--n", "4", "--num-inference-steps", "4", "--sampler", "heun_sde",
                     "--spacing", "logsnr", "--option", "s_churn=10", "--out", "h.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_png(tmp_path / "h.png")


def test_missing_data_folder_is_a_clear_error(tmp_path):
    result = run_cli("train", *TINY, "--data", "/nonexistent/images", "--out", "run", cwd=tmp_path)
    assert_clean_error(result.returncode, result.stderr, "/nonexistent/images", "does not exist")
    assert not (tmp_path / "run").exists()


# --- every bad-data case surfaces as a clear error (in-process) ---------------------------------------


def _bad_folder(kind: str, root: Path) -> str:
    folder = root / kind
    folder.mkdir()
    if kind == "corrupt":
        (folder / "digit.png").write_bytes(b"this is not a PNG")
    elif kind == "small":
        Image.new("L", (4, 4)).save(folder / "small.png")
    elif kind == "file":
        folder.rmdir()
        folder.write_text("not a folder")
    return str(folder)


@pytest.mark.parametrize("data, extra, needles", [
    ("mnsit", [], ["unknown dataset 'mnsit'", "did you mean 'mnist'"]),
    ("toy2d:spiral", [], ["unknown toy2d variant 'spiral'", "swissroll"]),
    ("toy2d", ["--image-size", "8"], ["2-D points, not images", "--image-size"]),
    ("digits", ["--image-size", "0"], ["image_size must be a positive"]),
    ("FOLDER:empty", [], ["no images found under", "empty"]),
    ("FOLDER:corrupt", [], ["cannot read image", "digit.png"]),
    ("FOLDER:small", ["--image-size", "8"], ["small.png is 4x4 pixels", "--image-size 4"]),
    ("FOLDER:file", [], ["is a file, not a folder"]),
])
def test_bad_data_gives_exit_code_2_and_a_clear_message(tmp_path, capsys, data, extra, needles):
    if data.startswith("FOLDER:"):
        data = _bad_folder(data.split(":")[1], tmp_path)
    out = tmp_path / "run"
    code = main(["train", *TINY, "--data", data, *extra, "--out", str(out)])
    assert_clean_error(code, capsys.readouterr().err, *needles)
    assert not out.exists()  # nothing is written before the data loads


def test_diverging_training_is_a_clear_error(tmp_path, capsys):
    code = main(["train", *TINY, "--lr", "1e30", "--warmup-steps", "0", "--no-bf16", "--out", str(tmp_path)])
    assert_clean_error(code, capsys.readouterr().err, "loss became", "at step", "--lr")


@pytest.mark.parametrize("args, needles", [
    (["--class", "12"], ["class labels must be", "0..9"]),
    (["--sampler", "ddpm", "--eta", "0.5"], ["ddpm has no option eta", "variance"]),
    (["--eta", "2"], ["eta in [0, 1]"]),
    (["--steps", "0"], ["steps must be >= 1"]),
    (["--spacing", "cubic"], ["unknown spacing 'cubic'"]),
])
def test_bad_sample_options_give_clear_errors(cli_run, tmp_path, capsys, args, needles):
    code = main(["sample", "--run", str(cli_run), "--n", "4", "--num-inference-steps", "3", *args,
                 "--out", str(tmp_path / "x.png")])
    assert_clean_error(code, capsys.readouterr().err, *needles)


def test_sample_from_a_missing_run_is_a_clear_error(tmp_path, capsys):
    code = main(["sample", "--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")])
    assert_clean_error(code, capsys.readouterr().err, "nope", "does not exist")


# --- resume and 2-D runs (in-process) ------------------------------------------------------------------


def test_train_resume_continues_and_refuses_changed_settings(cli_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(cli_run, run)
    code = main(["train", *TINY, "--lr", "5e-3", "--resume", "--out", str(run)])
    assert_clean_error(code, capsys.readouterr().err, "settings differ", "(lr)")
    assert main(["train", *TINY, "--max-train-steps", "6", "--resume", "--out", str(run)]) == 0
    assert f"resumed {run} at step 4" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [4, 6]  # the digits preset logs every 25 steps, and always the last one
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-00000006"


def test_toy2d_train_and_sample_draw_scatter_plots(tmp_path, capsys):
    run = tmp_path / "toy"
    assert main(["train", "--preset", "toy2d", "--max-train-steps", "3", "--num-samples", "50", "--sample-steps", "2",
                 "--out", str(run)]) == 0
    assert_png(run / "samples" / "final.png")
    assert_png(run / "samples" / "loss.png")
    assert not (run / "samples" / "trajectory.png").exists()
    assert main(["sample", "--run", str(run), "--n", "50", "--num-inference-steps", "3", "--out", str(tmp_path / "pts.png")]) == 0
    assert_png(tmp_path / "pts.png")
    code = main(["sample", "--run", str(run), "--n", "50", "--num-inference-steps", "3", "--out", str(tmp_path / "p.png"),
                 "--trajectory", str(tmp_path / "t.png")])
    assert_clean_error(code, capsys.readouterr().err, "--trajectory", "2-D points")
