"""Bad input gets a clear message, never a traceback and never a silently wrong result (issue #15, 3).

Each case runs the command line in-process (``undiffuse.cli.main``) and checks the exit code 2, a
one-line ``error:`` naming the problem, and that nothing was trained or written. The run they load
is one tiny run (8x8 digits, the tiny U-Net, 2 steps), copied and then damaged per test.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import undiffuse
from undiffuse.checks import MAX_GUIDANCE, check_guidance
from undiffuse.cli import main
from undiffuse.config import TrainConfig
from undiffuse.data import DataError, load_dataset
from undiffuse.denoiser import Denoiser
from undiffuse.nets import build_net
from undiffuse.processes import make_process
from undiffuse.trainer import Trainer

from helpers_cli import assert_clean_error

TINY = ["--preset", "digits", "--net", "tiny", "--max-train-steps", "2", "--batch-size", "8", "--num-samples", "4",
        "--sample-steps", "2"]
CKPT = Path("checkpoints") / "step-00000002"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad-input") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _sample(run: Path, tmp_path: Path, *args: str) -> int:
    return main(["sample", "--run", str(run), "--n", "2", "--num-inference-steps", "2", "--out", str(tmp_path / "x.png"), *args])


def _resume(run: Path) -> int:
    return main(["train", *TINY, "--max-train-steps", "3", "--resume", "--out", str(run)])


# --- training settings: refused before any work ------------------------------------------------------------


@pytest.mark.parametrize("flags, needles", [
    (["--num-samples", "-1"], ["num_samples (--num-samples) must be >= 1"]),
    (["--sample-steps", "0"], ["sample_steps (--sample-steps) must be >= 1"]),
    (["--snr-gamma", "-1"], ["snr_gamma (--snr-gamma) must be > 0", "wrong way"]),
    (["--snr-gamma", "0"], ["snr_gamma (--snr-gamma) must be > 0", "trains nothing"]),
    (["--lr", "inf"], ["lr (--lr) must be a finite number, got inf"]),
    (["--weight-decay", "nan"], ["weight_decay (--weight-decay) must be a finite number"]),
    (["--grad-clip", "inf"], ["grad_clip (--grad-clip) must be a finite number"]),
    (["--ema-decay", "nan"], ["ema_decay (--ema-decay) must be a finite number"]),
    (["--label-dropout", "nan"], ["label_dropout (--label-dropout) must be a finite number"]),
    (["--max-minutes", "inf"], ["max_minutes (--max-minutes) must be a finite number"]),
    (["--guidance", "nan"], ["guidance (--guidance) must be a finite number"]),
    (["--guidance", "inf"], ["guidance (--guidance) must be a finite number"]),
    (["--guidance", "1e30"], ["guidance (--guidance) 1e+30 is out of range", f"{MAX_GUIDANCE:g}"]),
])
def test_bad_training_settings_are_refused_before_training(tmp_path, capsys, flags, needles):
    out = tmp_path / "run"
    code = main(["train", *TINY, *flags, "--out", str(out)])
    assert_clean_error(code, capsys.readouterr().err, "invalid training config", *needles)
    assert not out.exists()  # refused before anything was trained or written


@pytest.mark.parametrize("field, value, needle", [
    ("max_train_steps", True, "max_train_steps must be int, got True"),
    ("lr", "0.1", "lr must be float, got '0.1'"),
    ("net", 3, "net must be str or dict, got 3"),
    ("max_minutes", float("nan"), "max_minutes (--max-minutes) must be a finite number"),
])
def test_training_config_fields_of_the_wrong_type_are_refused(field, value, needle):
    with pytest.raises(ValueError, match=re.escape(f"invalid training config: {needle}")):
        TrainConfig(**{field: value}).validate()


def test_guidance_bound_is_inclusive():
    check_guidance(MAX_GUIDANCE, "w")
    check_guidance(-MAX_GUIDANCE, "w")
    with pytest.raises(ValueError, match="out of range"):
        check_guidance(math.nextafter(MAX_GUIDANCE, math.inf), "w")


# --- output paths ------------------------------------------------------------------------------------------


def test_train_out_under_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    code = main(["train", *TINY, "--out", str(tmp_path / "notes.txt" / "run")])
    assert_clean_error(code, capsys.readouterr().err, "notes.txt", "which is a file, not a folder")


def test_train_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    code = main(["train", *TINY, "--out", str(tmp_path / "notes.txt")])
    assert_clean_error(code, capsys.readouterr().err, "notes.txt is a file, not a folder")
    assert (tmp_path / "notes.txt").read_text() == "x"


def test_sample_out_that_is_a_folder_is_refused(run, tmp_path, capsys):
    code = main(["sample", "--run", str(run), "--n", "2", "--num-inference-steps", "2", "--out", str(tmp_path)])
    assert_clean_error(code, capsys.readouterr().err, f"--out {tmp_path} is a folder", "samples.png")


def test_sample_out_under_a_file_is_refused(run, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("x")
    code = _sample(run, tmp_path, "--out", str(tmp_path / "notes.txt" / "x.png"))
    assert_clean_error(code, capsys.readouterr().err, "--out", "which is a file, not a folder")


def test_sample_trajectory_that_is_a_folder_is_refused(run, tmp_path, capsys):
    code = _sample(run, tmp_path, "--trajectory", str(tmp_path))
    assert_clean_error(code, capsys.readouterr().err, "--trajectory", "is a folder")
    assert not (tmp_path / "x.png").exists()  # checked before sampling


# --- sampling settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, needles", [
    (["--n", "-1"], ["--n must be >= 1, got -1"]),
    (["--n", "0"], ["--n must be >= 1, got 0"]),
    (["--guidance", "nan"], ["--guidance must be a finite number, got nan"]),
    (["--guidance", "inf"], ["--guidance must be a finite number, got inf"]),
    (["--guidance", "1e30"], ["--guidance 1e+30 is out of range"]),
    (["--classifier-scale", "inf"], ["--classifier-scale must be a finite number"]),
    (["--option", "s_churn=nan", "--sampler", "heun"], ["sampler option s_churn must be a finite number"]),
])
def test_bad_sample_settings_are_refused(run, tmp_path, capsys, flags, needles):
    code = _sample(run, tmp_path, *flags)
    assert_clean_error(code, capsys.readouterr().err, *needles)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("flags, needles", [
    (["--n", "-5"], ["--n must be >= 1, got -5"]),
    (["--guidance", "nan"], ["--guidance must be a finite number"]),
    (["--guidance-scales", "1", "inf"], ["--guidance-scales must be a finite number"]),
    (["--nll-images", "-1"], ["--nll-images must be >= 0"]),
    (["--nll-steps", "0"], ["--nll-steps must be >= 1"]),
])
def test_bad_eval_settings_are_refused(run, capsys, flags, needles):
    code = main(["eval", "--run", str(run), "--num-inference-steps", "2", *flags])
    assert_clean_error(code, capsys.readouterr().err, *needles)
    assert not (run / "eval.json").exists()


def test_pipeline_sample_checks_its_settings(run):
    pipe = undiffuse.load(run)
    with pytest.raises(ValueError, match="n must be >= 1, got -1"):
        pipe.sample(-1, num_inference_steps=2)
    with pytest.raises(ValueError, match="guidance must be a finite number"):
        pipe.sample(2, num_inference_steps=2, class_labels=1, guidance=float("nan"))


# --- non-finite samples are never written ------------------------------------------------------------------


def _poison(path: Path) -> None:
    """Put a NaN in a weights file, as a diverged run would."""
    tensors = load_file(str(path))
    tensors["net.conv_in.weight"][0, 0, 0, 0] = float("nan")
    save_file(tensors, str(path))


def test_sample_refuses_nan_weights_and_writes_nothing(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    _poison(copy / CKPT / "ema.safetensors")
    code = _sample(copy, tmp_path)
    assert_clean_error(code, capsys.readouterr().err, "non-finite values", f"the weights of {copy} contain NaN")
    assert not (tmp_path / "x.png").exists()


def test_eval_refuses_nan_weights(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    _poison(copy / CKPT / "ema.safetensors")
    code = main(["eval", "--run", str(copy), "--n", "10", "--num-inference-steps", "2", "--nll-images", "0"])
    assert_clean_error(code, capsys.readouterr().err, "non-finite values", "contain NaN")
    assert not (copy / "eval.json").exists()


def test_training_grids_refuse_nan_weights(tmp_path):
    cfg = TrainConfig(data="digits", net="tiny", max_train_steps=1, batch_size=8, num_samples=4, sample_steps=2,
                      out=str(tmp_path / "run"))
    trainer = Trainer(cfg)
    with torch.no_grad():
        next(trainer.ema.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite values.*contain NaN"):
        trainer.write_samples("final")
    assert not (tmp_path / "run" / "samples" / "final.png").exists()


def test_diverging_settings_with_finite_weights_are_named(run):
    pipe = undiffuse.load(run)
    with torch.no_grad():
        for p in pipe.denoiser.parameters():
            p.mul_(1e30)  # finite, but the samples overflow
    with pytest.raises(ValueError, match="weights are finite, so the sampling settings diverge"):
        pipe.sample(2, num_inference_steps=2, class_labels=1, guidance=MAX_GUIDANCE)


# --- data that does not fit the run ------------------------------------------------------------------------


def test_image_folder_smaller_than_the_batch_is_refused(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        Image.new("L", (8, 8), 40 * i).save(folder / f"{i}.png")
    out = tmp_path / "run"
    code = main(["train", "--data", str(folder), "--image-size", "8", "--net", "tiny", "--max-train-steps", "2",
                 "--out", str(out)])
    assert_clean_error(code, capsys.readouterr().err, "has 5 images, fewer than --batch-size 64",
                       "--batch-size 5 or less")
    assert not out.exists()


def test_mlp_on_images_is_refused(tmp_path, capsys):
    code = main(["train", *TINY, "--net", "mlp", "--out", str(tmp_path / "run")])
    assert_clean_error(code, capsys.readouterr().err, "--net mlp is an MLP for low-dimensional points",
                       "holds images (1, 8, 8)", "tiny")


def test_unet_on_points_is_refused(tmp_path, capsys):
    code = main(["train", "--preset", "toy2d", "--net", "tiny", "--max-train-steps", "2",
                 "--out", str(tmp_path / "run")])
    assert_clean_error(code, capsys.readouterr().err, "--net tiny is a U-Net for images", "2-D points",
                       "--net mlp")


def test_caption_file_that_is_not_utf8_is_named(tmp_path):
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_bytes(b"a red circle" if i == 0 else b"a red \xff circle")
    with pytest.raises(DataError, match=r"1\.txt is not UTF-8 text \(byte 6"):
        load_dataset(str(tmp_path), image_size=8, captions=True)


def test_metadata_file_that_is_not_utf8_is_named(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_bytes(b'{"file_name": "a.png", "text": "\xff"}\n')
    with pytest.raises(DataError, match=r"metadata\.jsonl is not UTF-8 text"):
        load_dataset(str(tmp_path), image_size=8, captions=True)


@pytest.mark.parametrize("file_name, shown", [(5, "5"), (None, "null")])
def test_metadata_file_name_that_is_not_a_string_is_named(tmp_path, file_name, shown):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": file_name, "text": "a cat"}) + "\n")
    with pytest.raises(DataError, match=f"metadata.jsonl, line 1: 'file_name' must be a string, got {shown}"):
        load_dataset(str(tmp_path), image_size=8, captions=True)


# --- a damaged run directory -------------------------------------------------------------------------------


def _delete(*keys: str):
    def edit(cfg: dict) -> None:
        for key in keys[:-1]:
            cfg = cfg[key]
        del cfg[keys[-1]]
    return edit


def _set(*keys: str, value):
    def edit(cfg: dict) -> None:
        for key in keys[:-1]:
            cfg = cfg[key]
        cfg[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, needles", [
    (_delete("net"), ["lacks the entry 'net'"]),
    (_delete("process"), ["lacks the entry 'process'"]),
    (_delete("denoiser"), ["lacks the entry 'denoiser'"]),
    (_delete("data"), ["lacks the entry 'data'"]),
    (_delete("data", "shape"), ["lacks the entry 'data.shape'"]),
    (_delete("denoiser", "sigma_data"), ["lacks the entry 'denoiser.sigma_data'"]),
    (_set("net", value=5), ["has 'net' = 5", "an object"]),
    (_set("data", "shape", value="abc"), ["has 'data.shape' = 'abc'", "positive integers"]),
    (_set("data", "num_classes", value="ten"), ["has 'data.num_classes' = 'ten'", "integer >= 1"]),
    (_set("denoiser", "prediction", value=3), ["has 'denoiser.prediction' = 3"]),
    (_set("net", "bogus", value=1), ["'net' entry does not build", "bogus"]),
    (_set("process", "type", value="ddim"), ["'process' or 'denoiser' entry does not build", "'ddim'"]),
])
def test_config_with_missing_or_wrong_entries_is_named(run, tmp_path, capsys, edit, needles):
    copy = _copy(run, tmp_path)
    _edit_json(copy / "config.json", edit)
    code = _sample(copy, tmp_path)
    assert_clean_error(code, capsys.readouterr().err, str(copy / "config.json"), *needles)


@pytest.mark.parametrize("edit, needles", [
    (_set("data", "shape", value=[3, 8, 8]), ["'net' takes 1-channel images", "[3, 8, 8]"]),
    (_set("data", "shape", value=[1, 16, 16]), ["'net' was built for 8x8 images", "[1, 16, 16]"]),
    (_set("data", "num_classes", value=5), ["'net' has num_classes 10", "'data.num_classes' is 5"]),
    (_set("data", "num_classes", value=None), ["'net' has num_classes 10", "'data.num_classes' is None"]),
])
def test_config_disagreeing_with_its_network_is_refused(run, tmp_path, capsys, edit, needles):
    copy = _copy(run, tmp_path)
    _edit_json(copy / "config.json", edit)
    code = _sample(copy, tmp_path)
    assert_clean_error(code, capsys.readouterr().err, "the entries disagree", *needles)
    assert not (tmp_path / "x.png").exists()


def test_config_whose_network_does_not_fit_the_weights_is_refused(run, tmp_path, capsys):
    # Data and net edited together (16x16 images): consistent, but the weights are an 8x8 net's
    # (attention at 16x16 adds layers), so they cannot be sampled at 16x16.
    copy = _copy(run, tmp_path)
    _edit_json(copy / "config.json", lambda c: (c["data"].update(shape=[1, 16, 16]), c["net"].update(image_size=16)))
    code = _sample(copy, tmp_path)
    assert_clean_error(code, capsys.readouterr().err, "ema.safetensors do not fit the network", "tensors missing")


def _foreign_weights(kind: str) -> dict[str, torch.Tensor]:
    net = build_net({"type": "mlp", "hidden": 32, "num_blocks": 1}) if kind == "mlp" else \
        build_net("tiny", image_size=8, num_classes=10, channels=32)
    return {k: v.contiguous() for k, v in Denoiser(net, make_process("ddpm:cosine:1000"), "v").state_dict().items()}


@pytest.mark.parametrize("kind, needles", [
    ("mlp", ["tensors missing", "unexpected tensors"]),
    ("wider-unet", ["of other shapes", "(the network's: "]),
])
def test_weights_of_another_network_are_refused(run, tmp_path, capsys, kind, needles):
    copy = _copy(run, tmp_path)
    for name in ("ema", "model"):
        save_file(_foreign_weights(kind), str(copy / CKPT / f"{name}.safetensors"))
    code = _sample(copy, tmp_path)
    assert_clean_error(code, capsys.readouterr().err, "ema.safetensors do not fit the network", *needles)
    code = _resume(copy)
    assert_clean_error(code, capsys.readouterr().err, "model.safetensors do not fit the network", *needles)


@pytest.mark.parametrize("key, needles", [
    ("step", ["state.json lacks the entry 'step'"]),
    ("optimizer", ["state.json lacks the entry 'optimizer'"]),
])
def test_state_json_with_missing_keys_is_named(run, tmp_path, capsys, key, needles):
    copy = _copy(run, tmp_path)
    _edit_json(copy / CKPT / "state.json", _delete(key))
    assert_clean_error(_resume(copy), capsys.readouterr().err, *needles)


@pytest.mark.parametrize("key", ["generator", "torch_global"])
def test_rng_file_with_missing_keys_is_named(run, tmp_path, capsys, key):
    copy = _copy(run, tmp_path)
    path = copy / CKPT / "rng.safetensors"
    tensors = load_file(str(path))
    del tensors[key]
    save_file(tensors, str(path))
    assert_clean_error(_resume(copy), capsys.readouterr().err, f"rng.safetensors: '{key}' must be",
                       "got missing")


def test_eval_reads_a_checked_config(run, tmp_path, capsys):
    copy = _copy(run, tmp_path)
    _edit_json(copy / "config.json", _delete("train"))
    code = main(["eval", "--run", str(copy), "--n", "10", "--num-inference-steps", "2"])
    assert_clean_error(code, capsys.readouterr().err, "lacks the entry 'train'")
