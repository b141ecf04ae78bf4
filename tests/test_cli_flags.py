"""`undiffuse train`'s flags, generated from TrainConfig's fields (``undiffuse.cli_flags``): every flag
of the hand-written table they replaced still parses to the same field and value, --steps and
--schedule are deprecated aliases that warn, and --help shows groups and defaults."""
from __future__ import annotations

import argparse
import warnings
from dataclasses import fields
from pathlib import Path

import pytest

from undiffuse.cli import build_parser, main
from undiffuse.cli_flags import add_train_parser, config_from_args, flag_fields
from undiffuse.config import GROUPS, PRESETS, TrainConfig

# Every `undiffuse train` flag taking a value before the flags were generated (cli.TRAIN_FLAGS),
# with an argument, the field it sets and the value that field must get (its type included).
OLD_VALUE_FLAGS = [
    ("--data", "photos", "data", "photos"), ("--image-size", "16", "image_size", 16),
    ("--channels", "3", "channels", 3), ("--on-bad-image", "skip", "on_bad_image", "skip"),
    ("--net", "tiny", "net", "tiny"), ("--process", "blur:T=20", "process", "blur:T=20"),
    ("--prediction", "eps", "prediction", "eps"), ("--label-dropout", "0.25", "label_dropout", 0.25),
    ("--loss", "l1", "loss", "l1"), ("--weighting", "uniform", "weighting", "uniform"),
    ("--snr-gamma", "3", "snr_gamma", 3.0), ("--steps", "123", "max_train_steps", 123),
    ("--batch-size", "16", "batch_size", 16), ("--lr", "1e-4", "lr", 1e-4),
    ("--lr-schedule", "constant", "lr_schedule", "constant"), ("--warmup-steps", "7", "warmup_steps", 7),
    ("--weight-decay", "0.01", "weight_decay", 0.01), ("--grad-clip", "0.5", "grad_clip", 0.5),
    ("--ema-decay", "0.99", "ema_decay", 0.99), ("--seed", "5", "seed", 5), ("--device", "cpu", "device", "cpu"),
    ("--max-minutes", "2.5", "max_minutes", 2.5), ("--out", "runs/x", "out", "runs/x"),
    ("--log-every", "3", "log_every", 3), ("--checkpoint-every", "9", "checkpoint_every", 9),
    ("--sample-every", "0", "sample_every", 0), ("--num-samples", "8", "num_samples", 8),
    ("--sampler", "heun", "sampler", "heun"), ("--sample-steps", "12", "sample_steps", 12),
    ("--guidance", "1.5", "guidance", 1.5), ("--severity-weighting", "linear", "severity_weighting", "linear"),
    ("--prior-components", "10", "prior_components", 10),
    ("--text-encoder", "fake", "text_encoder", "fake"), ("--caption-dropout", "0.2", "caption_dropout", 0.2),
    ("--on-missing-caption", "warn", "on_missing_caption", "warn"),
    ("--caption-column", "caption", "caption_column", "caption"),
]
# The boolean fields that were --x / --no-x flags (cli.BOOL_FLAGS).
OLD_BOOL_FIELDS = ["bf16", "channels_last", "compile", "class_conditional", "learn_variance",
                   "labels_from_subfolders", "residual", "standardize_input", "text"]


def train_config(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def train_parser() -> argparse.ArgumentParser:
    return add_train_parser(argparse.ArgumentParser().add_subparsers())


@pytest.mark.parametrize("flag, text, field, value", OLD_VALUE_FLAGS, ids=[row[0] for row in OLD_VALUE_FLAGS])
def test_every_old_value_flag_sets_the_same_field(flag, text, field, value):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = train_config("--preset", "mnist", flag, text)
    got = getattr(cfg, field)
    assert got == value and type(got) is type(value), (flag, got)
    # Only the renamed flag warns, and it names its replacement.
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert messages == (["--steps is deprecated and will be removed in the next release; use --max-train-steps"]
                        if flag == "--steps" else [])
    untouched = {f.name for f in fields(TrainConfig)} - {field}
    assert all(getattr(cfg, name) == getattr(PRESETS["mnist"], name) for name in untouched)


@pytest.mark.parametrize("field", OLD_BOOL_FIELDS)
def test_every_old_boolean_flag_keeps_its_on_and_off_forms(field):
    name = "--" + field.replace("_", "-")
    assert getattr(train_config(name), field) is True
    assert getattr(train_config("--no-" + name[2:]), field) is False
    assert getattr(train_config("--preset", "cold-blur"), field) == getattr(PRESETS["cold-blur"], field)


def test_the_flags_are_the_old_ones_plus_max_train_steps():
    flags = {s for action in train_parser()._actions for s in action.option_strings}
    old = {row[0] for row in OLD_VALUE_FLAGS}
    old |= {f"--{p}{b.replace('_', '-')}" for b in OLD_BOOL_FIELDS for p in ("", "no-")}
    assert flags == old | {"-h", "--help", "--preset", "--resume", "--overwrite", "--max-train-steps", "--autoencoder"}
    # One flag per field but clip_x0 (None, no clamping, cannot be typed), each with help and a group.
    assert [f.name for f in flag_fields()] == [f.name for f in fields(TrainConfig)
                                             if f.name not in ("clip_x0", "kl_weight", "autoencoder_training")]
    assert all(f.metadata["help"] and f.metadata["group"] in GROUPS for f in fields(TrainConfig))


def test_new_and_old_step_flags_agree_and_presets_still_apply():
    assert train_config("--max-train-steps", "77").max_train_steps == 77
    with pytest.warns(FutureWarning, match="--steps is deprecated"):
        assert train_config("--steps", "77") == train_config("--max-train-steps", "77")
    assert train_config("--preset", "digits").max_train_steps == 2000
    with pytest.warns(FutureWarning):
        assert train_config("--preset", "digits", "--steps", "3").updated(max_train_steps=2000) == PRESETS["digits"]


def test_deprecated_steps_still_trains_through_main(tmp_path):
    tiny = ["--preset", "digits", "--net", "tiny", "--batch-size", "8", "--num-samples", "4", "--sample-steps", "2",
            "--sample-every", "0", "--no-bf16", "--out", str(tmp_path / "run")]
    with pytest.warns(FutureWarning, match="use --max-train-steps"):
        assert main(["train", "--steps", "2", *tiny]) == 0
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step-00000002"


def test_schedule_is_a_deprecated_spelling_of_spacing():
    parser = build_parser()
    assert parser.parse_args(["sample", "--run", "r", "--spacing", "karras"]).spacing == "karras"
    with pytest.warns(FutureWarning, match="--schedule is deprecated .* use --spacing"):
        assert parser.parse_args(["sample", "--run", "r", "--schedule", "karras"]).spacing == "karras"


def test_train_classifier_takes_max_train_steps_and_the_old_steps():
    parser = build_parser()
    args = parser.parse_args(["train-classifier", "--run", "r"])
    assert args.max_train_steps == 2000
    assert parser.parse_args(["train-classifier", "--run", "r", "--max-train-steps", "5"]).max_train_steps == 5
    with pytest.warns(FutureWarning, match="--steps is deprecated"):
        assert parser.parse_args(["train-classifier", "--run", "r", "--steps", "5"]).max_train_steps == 5


def test_help_is_grouped_and_shows_defaults(capsys):
    with pytest.raises(SystemExit, match="0"):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for title in GROUPS.values():
        assert f"{title}:" in text, title
    assert "--max-train-steps MAX_TRAIN_STEPS total number of optimisation steps to train for (default: 700; " \
           "--preset digits: 2000, toy2d: 3000" in text
    assert "--steps MAX_TRAIN_STEPS deprecated spelling of --max-train-steps" in text
    assert "--bf16, --no-bf16 bf16 autocast (AMX on recent Intel CPUs) (default: on; --preset toy2d: off)" in text
    assert "--prediction {eps,x0,v,edm}" in text and "--lr-schedule {constant,cosine}" in text
    assert "--net NET network preset" in text and 'toy2d: {"type": "mlp"}' in text


def test_bad_values_are_still_refused_by_the_config_not_argparse(tmp_path, capsys):
    """Choices are shown in --help; the config refuses a bad value with its own message (exit 2, no usage)."""
    code = main(["train", "--prediction", "noise", "--out", str(tmp_path / "run")])
    assert code == 2 and "prediction must be one of" in capsys.readouterr().err
    code = main(["train", "--max-train-steps", "0", "--out", str(tmp_path / "run")])
    assert code == 2 and "max_train_steps (--max-train-steps) must be >= 1" in capsys.readouterr().err


OLD_RUNS = Path(__file__).parent / "fixtures" / "old_runs"


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_precision_defaults_to_bf16_only_where_measured_and_native(command, monkeypatch):
    from undiffuse import compiling
    from undiffuse.cli_sampling import sample_spec

    def spec(run: str, *flags: str, native: bool = True):
        monkeypatch.setattr(compiling, "native_bf16", lambda device: native)
        return sample_spec(build_parser().parse_args([command, "--run", str(OLD_RUNS / run), *flags]))

    assert spec("gaussian").bf16 is True  # a Gaussian pixel run on bf16 hardware
    assert spec("gaussian", native=False).bf16 is False  # emulated bf16 would be slower than float32
    assert spec("cold").bf16 is False  # not measured there: float32
    assert spec("text").bf16 is True  # measured on the shapes run (docs/speed.md)
    assert spec("gaussian", "--no-bf16").bf16 is False
    assert spec("cold", "--bf16", native=False).bf16 is True  # asked for: always honoured
    from undiffuse.compiling import bf16_by_default

    monkeypatch.setattr(compiling, "native_bf16", lambda device: True)
    pixel = {"process": {"type": "ddpm"}}
    latent = {**pixel, "latent": {"run": "ae"}}  # a latent run: not measured either
    assert bf16_by_default(pixel, None) is True and bf16_by_default(latent, None) is False
    points = {**pixel, "data": {"shape": [2]}}  # toy2d's 2-D points: not measured either
    assert bf16_by_default(points, None) is False


def test_native_bf16_reads_the_cpu_flags(monkeypatch):
    import torch

    from undiffuse import compiling, distributed

    for features, expected in (([], False), (["avx512f"], False), (["avx512f", "avx512_bf16"], True),
                               (["amx_bf16"], True)):
        monkeypatch.setattr(distributed, "cpu_model_and_features", lambda f=features: ("cpu", f))
        assert compiling.native_bf16(torch.device("cpu")) is expected
