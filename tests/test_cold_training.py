"""Cold Diffusion (Bansal et al. 2022) wired into training, the pipeline and the CLI.

Covers: ``undiffuse train --process blur|mask|pixelate`` writes a complete run (config, prior,
checkpoints, grids) that ``undiffuse sample`` and ``undiffuse.load`` sample from; every other
degradation (desaturate, snow, fade, gaussian) trains and samples from the CLI too; ``undiffuse
degrade`` draws every ladder; a tiny blur restorer beats the blurred input; a stopped and resumed
cold run ends bitwise equal to an uninterrupted one; bad combinations of Gaussian and cold settings
are clear errors.

Everything runs in-process (``undiffuse.cli.main``) on the 8x8 digits with the "tiny" U-Net and
one intra-op thread.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import undiffuse
from undiffuse.checkpoint import latest_checkpoint, load_weights
from undiffuse.cli import main
from undiffuse.cold.pipeline import ColdPipeline
from undiffuse.config import TrainConfig
from undiffuse.data import load_dataset
from undiffuse.nets import UNET_PRESETS
from undiffuse.pipeline import SampleResult
from undiffuse.cold.degradations import DEGRADATIONS, make_degradation
from undiffuse.cold.prior import GaussianMixturePrior
from undiffuse.trainer import Trainer

from helpers_cli import assert_clean_error, assert_png
from helpers_resume import straight_and_resumed

TINY = ["--preset", "digits", "--net", "tiny", "--max-train-steps", "4", "--batch-size", "8", "--num-samples", "4",
        "--sample-steps", "3", "--no-bf16"]
#: Small T, so sampling a tiny run takes a fraction of a second.
SPECS = {"blur": "blur:T=5:k=3:sigma=1", "mask": "mask:T=8:fill=random", "pixelate": "pixelate:T=3"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def cold_runs(tmp_path_factory) -> dict[str, Path]:
    """`undiffuse train --process NAME` on tiny settings for blur, mask and pixelate."""
    root = tmp_path_factory.mktemp("cold")
    runs = {}
    for name, spec in SPECS.items():
        runs[name] = root / name
        assert main(["train", *TINY, "--process", spec, "--out", str(runs[name])]) == 0
    return runs


# --- the CLI trains and samples ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPECS))
def test_cli_trains_a_cold_run_and_samples_it(cold_runs, tmp_path, capsys, name):
    run = cold_runs[name]
    config = json.loads((run / "config.json").read_text())
    assert config["process"] == make_degradation(SPECS[name]).config()
    assert config["denoiser"] == {"prediction": "x0", "residual": False, "standardize_input": False}
    train = config["train"]  # the resolved settings: what the run did
    assert (train["loss"], train["sampler"], train["prediction"], train["weighting"]) == \
        ("l1", "improved", "x0", "uniform")
    assert latest_checkpoint(run).name == "step-00000004"
    prior = GaussianMixturePrior.from_json((run / "cold_prior.json").read_text())
    assert prior.degradation == config["process"] and prior.shape == (1, 8, 8)
    for picture in ("final.png", "final-restore.png", "trajectory.png", "loss.png"):
        width, height = assert_png(run / "samples" / picture)
        assert width > 32 and height > 32, picture

    assert main(["sample", "--run", str(run), "--n", "4", "--out", str(tmp_path / "grid.png"),
                 "--trajectory", str(tmp_path / "traj.png")]) == 0
    out = capsys.readouterr().out
    assert "4 samples" in out and "traj.png" in out
    assert_png(tmp_path / "grid.png")
    assert_png(tmp_path / "traj.png")
    for sampler in ("naive", "direct"):
        assert main(["sample", "--run", str(run), "--n", "3", "--sampler", sampler, "--num-inference-steps", "2",
                     "--class", "4", "--option", "noise_std=0.01", "--out", str(tmp_path / f"{sampler}.png")]) == 0
        assert_png(tmp_path / f"{sampler}.png")


def test_load_gives_a_cold_pipeline_that_samples_and_restores(cold_runs, digits):
    pipe = undiffuse.load(cold_runs["blur"])
    assert isinstance(pipe, ColdPipeline) and pipe.can_generate and not pipe.denoiser.training
    assert pipe.shape == (1, 8, 8) and pipe.num_classes == 10 and pipe.degradation.num_steps == 5
    a = pipe.sample(6, seed=3, class_labels=[0, 1, 2, 3, 4, 10], guidance=2.0)
    assert a.shape == (6, 1, 8, 8) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, pipe.sample(6, seed=3, class_labels=[0, 1, 2, 3, 4, 10], guidance=2.0))
    assert not torch.equal(a, pipe.sample(6, seed=4, class_labels=[0, 1, 2, 3, 4, 10], guidance=2.0))
    res = pipe.sample(2, sampler="naive", num_inference_steps=2, trajectory=True)
    assert isinstance(res, SampleResult) and len(res.xs) == len(res.x0_hats) == len(res.ts) == 2
    assert res.ts == [1.0, 0.4]  # severities 5, 2 (then 0), reported as t / T like the Gaussian samplers
    x0 = digits.x[:5]
    x_t = pipe.degrade(x0, 5)
    for algorithm in ("naive", "improved", "direct"):
        out = pipe.restore(x_t, 5, algorithm)
        assert out.shape == x0.shape and torch.isfinite(out).all()
    assert torch.equal(pipe.restore(x0, 0), x0)  # nothing to undo at t = 0
    model = undiffuse.load(cold_runs["blur"], weights="model")
    assert not torch.equal(model.sample(2), pipe.sample(2))  # EMA weights lag the trained ones


@pytest.mark.parametrize("spec, extra", [("desaturate:T=4", ["--channels", "3"]), ("snow:T=4", []),
                                         ("fade:T=4:source=digits", []), ("gaussian:T=4", [])])
def test_cli_trains_and_samples_every_other_degradation(tmp_path, capsys, digits, spec, extra):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--max-train-steps", "2", "--process", spec, *extra, "--out", str(run)]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and all(r["loss"] > 0 for r in log)
    assert main(["sample", "--run", str(run), "--n", "3", "--num-inference-steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert "3 samples" in capsys.readouterr().out
    assert_png(tmp_path / "g.png")
    pipe = undiffuse.load(run)
    channels = 3 if extra else 1
    x0 = digits.x[:3].expand(-1, channels, -1, -1)
    x_t = pipe.degrade(x0, generator=torch.Generator().manual_seed(0))
    assert pipe.restore(x_t, sampler="direct").shape == (3, channels, 8, 8)


# --- undiffuse degrade ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_degrade_draws_the_ladder_of_every_process(tmp_path, capsys, name):
    out = tmp_path / f"{name}.png"
    assert main(["degrade", "digits", "--process", name, "--n", "2", "--columns", "4", "--out", str(out)]) == 0
    assert "2 images x 4 severities" in capsys.readouterr().out
    width, height = assert_png(out)
    assert width > height > 48


def test_degrade_reads_colour_images_and_files(tmp_path):
    assert main(["degrade", "photos", "--process", "snow", "--n", "2", "--image-size", "32", "--seed", "1",
                 "--out", str(tmp_path / "snow.png")]) == 0
    with Image.open(tmp_path / "snow.png") as img:
        assert img.mode == "RGB"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "red.png")
    assert main(["degrade", str(tmp_path / "red.png"), "--process", "desaturate", "--max-severity", "4",
                 "--out", str(tmp_path / "gray.png")]) == 0
    assert_png(tmp_path / "gray.png")


# --- a tiny blur restorer learns --------------------------------------------------------------------


def test_tiny_blur_model_restores_better_than_the_blurred_input(tmp_path, digits):
    # 200 L1 steps of the tiny U-Net at batch 32 on 1500 digits (~5 s): measured RMSE on 200
    # held-out digits 0.56 blurred, 0.25 (Alg. 1), 0.20 (Alg. 2), 0.19 (direct).
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    train, test = digits.select(perm[:1500]), digits.x[perm[1500:1700]]
    cfg = TrainConfig(data="digits", net="tiny", process="blur:T=4:k=3:sigma=1", class_conditional=False,
                      residual=True, max_train_steps=200, batch_size=32, lr=3e-3, warmup_steps=10, ema_decay=0.98,
                      bf16=False, out=str(tmp_path), sample_every=0)
    trainer = Trainer(cfg, data=train)
    for _ in range(cfg.max_train_steps):
        trainer.train_step()
    pipe = trainer.pipeline()
    x_t = pipe.degrade(test, 4)

    def rmse(x):
        return float((x - test).square().mean().sqrt())
    for algorithm in ("naive", "improved", "direct"):
        assert rmse(pipe.restore(x_t, 4, algorithm)) < 0.6 * rmse(x_t), algorithm


# --- bitwise resume -----------------------------------------------------------------------------------


def resume_cfg(out: Path) -> TrainConfig:
    # A random degradation (mask centres and fill colours come from the generator), label dropout,
    # network dropout (torch's global RNG) and grids every 2 steps (which must leave every RNG alone).
    net = {"type": "unet", **UNET_PRESETS["tiny"], "attn_resolutions": (4,), "dropout": 0.1}
    return TrainConfig(data="digits", net=net, process="mask:T=6:fill=random", max_train_steps=8, batch_size=8,
                       lr=2e-3, warmup_steps=2, label_dropout=0.3, bf16=False, out=str(out), log_every=1,
                       checkpoint_every=4, sample_every=2, num_samples=4, sample_steps=3)


def test_cold_resume_equals_an_uninterrupted_run_bitwise(tmp_path, digits):
    straight, second = straight_and_resumed(resume_cfg, tmp_path, digits.select(torch.arange(64)))
    assert second.step == straight.step == 8
    for name in ("model", "ema", "optimizer", "rng"):
        a = load_weights(latest_checkpoint(second.run_dir) / f"{name}.safetensors")
        b = load_weights(latest_checkpoint(straight.run_dir) / f"{name}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(second.gen.get_state(), straight.gen.get_state())
    assert (second.run_dir / "cold_prior.json").read_text() == (straight.run_dir / "cold_prior.json").read_text()
    assert sorted(p.name for p in (second.run_dir / "samples").iterdir()) == [
        "final-restore.png", "final.png", "step-00000002-restore.png", "step-00000002.png",
        "step-00000004-restore.png", "step-00000004.png", "step-00000006-restore.png", "step-00000006.png"]


# --- bad combinations ----------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needles", [
    (["--process", "blur", "--prediction", "eps"], ["prediction='eps'", "Gaussian diffusion only"]),
    (["--process", "blur", "--learn-variance"], ["learn_variance=True"]),
    (["--process", "blur", "--weighting", "min_snr", "--snr-gamma", "1"], ["snr_gamma=1.0"]),
    (["--process", "blur", "--sampler", "ddim"], ["sampler 'ddim' is for Gaussian", "improved"]),
    (["--process", "ddpm:cosine:1000", "--sampler", "improved"], ["cold-diffusion sampler", "Gaussian"]),
    (["--residual"], ["residual applies to cold processes only"]),
    (["--process", "blur:sigmaa=3"], ["no setting 'sigmaa'", "kernel_size"]),
    (["--process", "blur", "--data", "toy2d"], ["degrades images", "2-D points"]),
])
def test_bad_train_combinations_are_clear_errors(tmp_path, capsys, args, needles):
    out = tmp_path / "run"
    assert_clean_error(main(["train", *TINY, *args, "--out", str(out)]), capsys.readouterr().err, *needles)
    assert not out.exists()


@pytest.mark.parametrize("args, needles", [
    (["--sampler", "ddim"], ["'ddim' is for Gaussian diffusion", "naive, improved, direct"]),
    (["--sampler", "improved", "--eta", "0.5"], ["has no option eta", "noise_std"]),
    (["--spacing", "karras"], ["spacing applies to Gaussian samplers"]),
    (["--classifier-scale", "1"], ["classifier guidance applies to Gaussian runs"]),
    (["--num-inference-steps", "0"], ["steps must be >= 1"]),
])
def test_bad_cold_sample_options_are_clear_errors(cold_runs, tmp_path, capsys, args, needles):
    code = main(["sample", "--run", str(cold_runs["pixelate"]), "--n", "2", *args, "--out", str(tmp_path / "x.png")])
    assert_clean_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "x.png").exists()


def test_cold_samplers_on_a_gaussian_run_and_bad_ladders_are_clear_errors(tmp_path, capsys, digits):
    gaussian = Trainer(TrainConfig(data="digits", net="tiny", out=str(tmp_path)), data=digits).pipeline()
    with pytest.raises(ValueError, match="'improved' is a cold-diffusion sampler"):
        gaussian.sample(2, sampler="improved")
    for args, needles in [(["digits", "--process", "blurr"], ["unknown degradation 'blurr'"]),
                          (["toy2d", "--process", "blur"], ["2-D points, not images"]),
                          ([str(tmp_path / "nope.png"), "--process", "blur"], ["nope.png does not exist"]),
                          (["digits", "--process", "mask", "--columns", "1"], ["--columns"])]:
        code = main(["degrade", *args, "--out", str(tmp_path / "l.png")])
        assert_clean_error(code, capsys.readouterr().err, *needles)


def test_train_classifier_refuses_a_cold_run(cold_runs, capsys):
    code = main(["train-classifier", "--run", str(cold_runs["blur"]), "--max-train-steps", "1"])
    assert_clean_error(code, capsys.readouterr().err, "cold-diffusion run", "Gaussian")
