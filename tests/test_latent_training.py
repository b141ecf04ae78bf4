"""train-autoencoder and latent diffusion through the shared Trainer: the measured scale, bitwise
resume of both, sampling that decodes to the data's shape, the autoencoder record, and bad input
(refused before anything is written)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import undiffuse
from undiffuse.checkpoint import latest_checkpoint, load_weights, read_json
from undiffuse.cli import main
from undiffuse.data import load_dataset
from undiffuse.latent.measure import encode_means
from undiffuse.latent.runs import load_autoencoder
from undiffuse.trainer import Trainer

from helpers_cli import assert_clean_error
from helpers_latent import ae_cfg, latent_cfg
from helpers_resume import straight_and_resumed


@pytest.fixture(scope="module")
def digits16():
    return load_dataset("digits", image_size=16, n=80, seed=0)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, digits16) -> Path:
    out = tmp_path_factory.mktemp("ae") / "run"
    Trainer(ae_cfg(out, max_train_steps=6), data=digits16).fit(progress=False)
    return out


def _same_checkpoints(a: Trainer, b: Trainer) -> None:
    for name in ("model", "ema", "optimizer", "rng"):
        x = load_weights(latest_checkpoint(a.run_dir) / f"{name}.safetensors")
        y = load_weights(latest_checkpoint(b.run_dir) / f"{name}.safetensors")
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name


def test_autoencoder_run_records_scale_and_reconstruction(ae_run, digits16):
    entry = read_json(ae_run / "config.json")["autoencoder"]
    ae, record = load_autoencoder(ae_run)
    train = digits16.split(8 / 80, seed=0)[0]  # what the run trained on (a tenth held out)
    assert entry["scaling_factor"] == pytest.approx(1 / encode_means(ae, train.x).double().std().item(), rel=1e-6)
    assert ae.scaling_factor == record["scaling_factor"] == entry["scaling_factor"]
    rec = entry["reconstruction_heldout"]
    assert rec["num_images"] == 8 and rec["psnr_db"] > 0 and -1 <= rec["ssim"] <= 1
    assert (ae_run / "samples" / "final.png").is_file() and (ae_run / "samples" / "step-00000002.png").is_file()
    assert set(load_weights(latest_checkpoint(ae_run) / "ema.safetensors")) == set(ae.state_dict())


def test_autoencoder_resume_is_bitwise(tmp_path, digits16):
    straight, second = straight_and_resumed(lambda out: ae_cfg(out, max_train_steps=8), tmp_path, digits16,
                                            crash_at=5, resume_at=4)
    _same_checkpoints(straight, second)


def test_latent_resume_is_bitwise(tmp_path, ae_run, digits16):
    straight, second = straight_and_resumed(lambda out: latent_cfg(out, ae_run, max_train_steps=8), tmp_path,
                                            digits16, crash_at=5, resume_at=4)
    _same_checkpoints(straight, second)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, ae_run, digits16) -> Path:
    out = tmp_path_factory.mktemp("latent") / "run"
    trainer = Trainer(latent_cfg(out, ae_run), data=digits16)
    trainer.fit(progress=False)
    assert trainer.data.x.shape[1:] == (3, 4, 4)
    assert trainer.data.x.std().item() == pytest.approx(1.0, abs=0.05)  # the scale makes unit variance
    return out


def test_latent_sampling_decodes_to_the_data_shape(latent_run, ae_run):
    pipe = undiffuse.load(latent_run)
    assert pipe.shape == (1, 16, 16) and pipe.denoised_shape == (3, 4, 4) and pipe.takes_labels
    x = pipe.sample(3, num_inference_steps=2, class_labels=[0, 1, 2], guidance=2.0, sampler="dpmpp_2m")
    assert x.shape == (3, 1, 16, 16) and x.abs().max() <= 1
    res = pipe.sample(2, num_inference_steps=2, trajectory=True)
    assert res.x0_hats[0].shape == res.xs[0].shape == (2, 1, 16, 16)
    assert torch.equal(res.x0, pipe.sample(2, num_inference_steps=2))
    latent = read_json(latent_run / "config.json")["latent"]
    assert latent["run"] == str(ae_run.resolve()) and latent["image_shape"] == [1, 16, 16]
    assert read_json(latent_run / "config.json")["denoiser"]["clip_x0"] is None  # latents are not in [-1, 1]


def _copy_runs(tmp_path: Path, ae_run: Path, latent_run: Path) -> tuple[Path, Path]:
    """A latent run recording a copy of the autoencoder, so the copy can be changed or removed."""
    ae, lat = tmp_path / "ae", tmp_path / "latent"
    shutil.copytree(ae_run, ae)
    shutil.copytree(latent_run, lat)
    cfg = read_json(lat / "config.json")
    cfg["latent"]["run"] = str(ae.resolve())
    (lat / "config.json").write_text(json.dumps(cfg))
    return ae, lat


def test_changed_or_missing_autoencoder_is_refused(tmp_path, ae_run, latent_run):
    ae, lat = _copy_runs(tmp_path, ae_run, latent_run)
    undiffuse.load(lat)  # the copy is the same autoencoder
    weights = latest_checkpoint(ae) / "ema.safetensors"
    tensors = load_weights(weights)
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + 0.1
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match="has changed since .* was trained on its latents"):
        undiffuse.load(lat)
    shutil.rmtree(ae)
    with pytest.raises(FileNotFoundError, match="that .* was trained on is missing"):
        undiffuse.load(lat)


def test_resume_refuses_a_changed_autoencoder(tmp_path, ae_run, digits16):
    ae = tmp_path / "ae"
    shutil.copytree(ae_run, ae)
    Trainer(latent_cfg(tmp_path / "lat", ae, max_train_steps=2), data=digits16).fit(progress=False)
    trainer = Trainer(ae_cfg(ae, max_train_steps=8), data=digits16)
    trainer.resume()
    trainer.fit(progress=False)  # the autoencoder trains on: new weights
    again = Trainer(latent_cfg(tmp_path / "lat", ae, max_train_steps=4), data=digits16)
    with pytest.raises(ValueError, match="has changed since"):
        again.resume()


@pytest.mark.parametrize("changes, match", [
    ({"channels": 3}, "encodes 1-channel images, but digits has 3-channel images"),
    ({"image_size": 10}, "not divisible by the autoencoder's downsampling factor 4"),
    ({"net": "mnist-demo", "image_size": 8}, r"latents are 2x2 .* needs a multiple of 4; use a U-Net with fewer"),
    ({"net": "kl-f8"}, "is an autoencoder, not a denoiser"),
])
def test_bad_latent_input_writes_nothing(tmp_path, ae_run, changes, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        Trainer(latent_cfg(out, ae_run, **changes))
    assert not out.exists()


def test_cli_train_autoencoder_and_bad_input(tmp_path, capsys, ae_run):
    assert main(["train-autoencoder", "--data", "digits", "--image-size", "16", "--max-train-steps", "2",
                 "--batch-size", "8", "--out", str(tmp_path / "ae"), "--no-bf16"]) == 0
    assert "latent scale" in capsys.readouterr().out
    code = main(["train-autoencoder", "--data", "digits", "--net", "tiny", "--out", str(tmp_path / "bad")])
    assert_clean_error(code, capsys.readouterr().err, "train-autoencoder trains a KL autoencoder")
    code = main(["train", "--data", "digits", "--autoencoder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")])
    assert_clean_error(code, capsys.readouterr().err, "does not exist", "train-autoencoder --out")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "x").exists()


def test_text_conditioning_works_on_latents(tmp_path, monkeypatch, ae_run, digits16):
    """Captions travel with the latents: a text run on them trains, loads and samples from prompts."""
    from helpers_text import DIGIT_WORDS, FAKE

    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path / "cache"))
    data = digits16.select(torch.arange(len(digits16)))
    data.captions = [f"a handwritten {DIGIT_WORDS[y]}" for y in data.labels.tolist()]
    cfg = latent_cfg(tmp_path / "text", ae_run, net="tiny", text=True, text_encoder=FAKE, max_train_steps=2,
                     sample_every=0)
    Trainer(cfg, data=data).fit(progress=False)
    pipe = undiffuse.load(tmp_path / "text")
    assert pipe.takes_prompts and pipe.denoised_shape == (3, 4, 4)
    x = pipe.sample(2, prompts=["a handwritten one", "a handwritten two"], guidance=3.0, num_inference_steps=2)
    assert x.shape == (2, 1, 16, 16)


def test_an_autoencoder_run_is_not_a_pipeline_and_an_unfinished_one_is_refused(tmp_path, ae_run):
    with pytest.raises(ValueError, match="is an autoencoder run .* does not sample"):
        undiffuse.load(ae_run)
    unfinished = tmp_path / "ae"
    shutil.copytree(ae_run, unfinished)
    cfg = read_json(unfinished / "config.json")
    del cfg["autoencoder"]  # as after a crash before the end of training
    (unfinished / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has not finished: .* --resume"):
        Trainer(latent_cfg(tmp_path / "out", unfinished))
    assert not (tmp_path / "out").exists()


def test_eval_measures_a_latent_run_in_pixel_space(tmp_path, monkeypatch):
    """8x8 digits (which have a feature net): samples decoded before they are measured; no DDPM
    bits/dim or rate-distortion, which would be about latents."""
    from undiffuse.evaluate import evaluate

    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path / "cache"))
    digits8 = load_dataset("digits", n=80, seed=0)
    Trainer(ae_cfg(tmp_path / "ae", image_size=None, max_train_steps=2, sample_every=0), data=digits8).fit(progress=False)
    net = {"type": "unet", "channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": ()}
    Trainer(latent_cfg(tmp_path / "lat", tmp_path / "ae", image_size=None, net=net, max_train_steps=2,
                       sample_every=0), data=digits8).fit(progress=False)
    result = evaluate(tmp_path / "lat", n=20, nll_images=4, num_inference_steps=2, plots=True)
    assert "fid" in result and "bits_per_dim_vlb" not in result
    assert set(result["plots"]) == {"samples", "loss", "trajectory"}  # no rate_distortion_*
    assert (tmp_path / "lat" / "eval" / "samples.png").is_file()
