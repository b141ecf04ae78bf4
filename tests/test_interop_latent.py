"""Latent runs through diffusers: a tiny autoencoder run and a tiny latent run on it, exported as an
LDMPipeline folder (unet/, scheduler/, vqvae/ with the run's latent scale), sampled by diffusers'
own LDMPipeline, and imported back as a latent run that carries its autoencoder run inside it.

* LDMPipeline (DDIM, eta 0, the same seed: it draws the initial latents as we do) decodes the same
  images as undiffuse's DDIM + ``LatentPipeline.decode`` to float tolerance: measured max |difference|
  on images in [0, 1] 3.0e-7 (AMD EPYC, Zen 4); the test allows 1e-5. LDMPipeline's own loop is
  used: latent runs do not clamp x0_hat, so it needs no ``use_clipped_model_output``.
* The import gives back the U-Net's and the autoencoder's weights bit for bit, samples exactly what
  the original samples, loads after being moved, and still refuses an autoencoder changed since.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import undiffuse
from undiffuse.cli import main
from undiffuse.data import load_dataset
from undiffuse.interop.diffusers_unet import InteropError
from undiffuse.interop.export import export_diffusers
from undiffuse.interop.import_ import NO_DATASET, import_diffusers
from undiffuse.interop.vae import export_vae
from undiffuse.samplers import ddim, timesteps
from undiffuse.trainer import Trainer

from helpers_interop import TINY_NET, checkpoint, copy_folder, edit_unet_tensors, listing, read_json, write_json
from helpers_latent import ae_cfg, latent_cfg

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
from diffusers import AutoencoderKL, LDMPipeline  # noqa: E402

STEPS = 20  # divides 1000: diffusers' DDIM then steps as our "trailing" spacing
TOL = 1e-5
#: Factor 2: 8x8 digits (which have an eval feature net) to 3x4x4 latents.
AE_NET = dict(type="autoencoder_kl", block_out_channels=[8, 16], layers_per_block=1, latent_channels=3,
              norm_num_groups=8, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
#: A U-Net that UNet2DModel expresses (helpers_interop.TINY_NET) on the 4x4 latents.
LATENT_NET = {**{k: v for k, v in TINY_NET.items() if k not in ("in_channels", "image_size")},
              "attn_resolutions": [2]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(the autoencoder run, the latent run on it, its export)."""
    root = tmp_path_factory.mktemp("latent-interop")
    digits8 = load_dataset("digits", n=200, seed=0)
    ae, lat = root / "ae", root / "latent"
    Trainer(ae_cfg(ae, image_size=None, net=AE_NET, max_train_steps=10, sample_every=0), data=digits8).fit(progress=False)
    Trainer(latent_cfg(lat, ae, image_size=None, net=LATENT_NET, class_conditional=False, max_train_steps=20,
                       ema_decay=0.9, sample_every=0), data=digits8).fit(progress=False)
    return ae, lat, export_diffusers(lat, root / "diffusers")


def _ours(run: Path, noise: torch.Tensor) -> np.ndarray:
    """undiffuse's DDIM on the latent run's EMA weights, decoded by its pipeline, as images in [0, 1]
    (N, H, W, C) like diffusers'."""
    pipe = undiffuse.load(run)
    with torch.no_grad():
        z = ddim(pipe.denoiser, noise, timesteps(pipe.denoiser.process, STEPS, "trailing"))
        x = pipe.decode(z)
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def test_the_folder_is_an_ldm_pipeline_with_the_runs_latent_scale(runs):
    ae, lat, folder = runs
    index = read_json(folder / "model_index.json")
    assert index["_class_name"] == "LDMPipeline" and index["vqvae"] == ["diffusers", "AutoencoderKL"]
    scale = read_json(lat / "config.json")["latent"]["scaling_factor"]
    assert read_json(folder / "vqvae" / "config.json")["scaling_factor"] == scale != 0.18215
    written = load_file(str(folder / "vqvae" / "diffusion_pytorch_model.safetensors"))
    original = load_file(str(checkpoint(ae) / "ema.safetensors"))
    assert written.keys() == original.keys() and all(torch.equal(written[k], original[k]) for k in original)


def test_ldm_pipeline_decodes_what_undiffuse_decodes(runs):
    _, lat, folder = runs
    pipe = LDMPipeline.from_pretrained(folder)
    theirs = pipe(batch_size=4, generator=torch.Generator().manual_seed(0), eta=0.0, num_inference_steps=STEPS,
                  output_type="np").images
    ours = _ours(lat, torch.randn(4, 3, 4, 4, generator=torch.Generator().manual_seed(0)))
    assert ours.shape == theirs.shape == (4, 8, 8, 1)
    diff = float(np.abs(ours - theirs).max())
    print(f"latent: max |ours - LDMPipeline| = {diff:.2g}")
    assert diff < TOL
    assert float(np.abs(theirs - theirs.mean()).max()) > 0.05  # not a constant picture


def _same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_import_gives_back_both_models_and_their_samples(runs, tmp_path):
    ae, lat, folder = runs
    imported = import_diffusers(folder, tmp_path / "imported")
    for name in ("ema", "model"):  # one set of weights each, in both files
        assert _same_tensors(checkpoint(imported) / f"{name}.safetensors", checkpoint(lat) / "ema.safetensors")
        assert _same_tensors(checkpoint(imported / "autoencoder") / f"{name}.safetensors",
                             checkpoint(ae) / "ema.safetensors")
    cfg, original = read_json(imported / "config.json"), read_json(lat / "config.json")
    assert cfg["latent"]["run"] == "autoencoder" and cfg["data"]["shape"] == original["data"]["shape"]
    for key in ("scaling_factor", "image_shape", "latent_shape"):
        assert cfg["latent"][key] == original["latent"][key], key
    settings = dict(num_inference_steps=5, seed=3)
    assert torch.equal(undiffuse.load(imported).sample(3, **settings), undiffuse.load(lat).sample(3, **settings))
    again = export_diffusers(imported, tmp_path / "again")  # and out again, the same folder
    for part in ("unet", "vqvae"):
        assert _same_tensors(again / part / "diffusion_pytorch_model.safetensors",
                             folder / part / "diffusion_pytorch_model.safetensors"), part
    assert read_json(again / "vqvae" / "config.json") == read_json(folder / "vqvae" / "config.json")


def test_an_import_moves_as_one_folder_and_refuses_a_changed_autoencoder(runs, tmp_path):
    """The autoencoder is recorded relative to the latent run (a regression: an absolute path would point
    into the staging folder, or at the old place after a move), with the sha256 of its weights."""
    imported = import_diffusers(runs[2], tmp_path / "imported")
    moved = tmp_path / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(imported), str(moved))
    weights = checkpoint(moved / "autoencoder") / "ema.safetensors"
    assert read_json(moved / "config.json")["latent"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert undiffuse.load(moved).sample(2, num_inference_steps=2).shape == (2, 1, 8, 8)
    tensors = load_file(str(weights))
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] + 0.1
    save_file(tensors, str(weights))
    with pytest.raises(ValueError, match=r"the autoencoder run .*/elsewhere/run/autoencoder has changed since .* was trained on"):
        undiffuse.load(moved)


def test_a_folder_saved_by_diffusers_imports(runs, tmp_path):
    """diffusers' own save_pretrained writes the AutoencoderKL config keys ours fixes or ignores
    (force_upcast, shift_factor, latents_mean, use_quant_conv, ...): the import reads them."""
    _, lat, folder = runs
    plain = tmp_path / "plain"
    LDMPipeline.from_pretrained(folder).save_pretrained(plain)
    assert "force_upcast" in read_json(plain / "vqvae" / "config.json")
    imported = import_diffusers(plain, tmp_path / "imported")
    assert read_json(imported / "config.json")["train"]["data"] == NO_DATASET
    settings = dict(num_inference_steps=3, seed=1)
    assert torch.equal(undiffuse.load(imported).sample(2, **settings), undiffuse.load(lat).sample(2, **settings))


def test_cli_sample_and_eval_accept_an_imported_latent_run(runs, tmp_path, capsys, monkeypatch):
    from undiffuse.evaluate import evaluate

    back = tmp_path / "back"
    assert main(["import", "--from", "diffusers", str(runs[2]), "--out", str(back)]) == 0
    assert main(["sample", "--run", str(back), "--n", "2", "--num-inference-steps", "3",
                 "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    capsys.readouterr()
    monkeypatch.setenv("UNDIFFUSE_CACHE", str(tmp_path / "cache"))  # the digits feature net, trained here
    result = evaluate(back, n=20, nll_images=4, num_inference_steps=2)
    assert np.isfinite(result["fid"]) and "bits_per_dim_vlb" not in result  # measured on decoded images


# --- refusals: each names the file, tensor or setting, and nothing is written ----------------------

def _refused_import(folder: Path, tmp_path: Path, match: str) -> None:
    before = listing(tmp_path)
    with pytest.raises(InteropError, match=match):
        import_diffusers(folder, tmp_path / "out")
    assert listing(tmp_path) == before


def _edit_vae_tensors(folder: Path, edit) -> None:
    edit_unet_tensors(folder, edit, part="vqvae")


def _edit_json(folder: Path, name: str, edit) -> None:
    cfg = read_json(folder / name)
    edit(cfg)
    write_json(folder / name, cfg)


@pytest.mark.parametrize("edit, match", [
    (lambda f: (f / "vqvae" / "config.json").unlink(), r"vqvae/config\.json is missing: a diffusers folder for its "
                                                       "autoencoder needs it"),
    (lambda f: (f / "vqvae" / "diffusion_pytorch_model.safetensors").unlink(),
     r"vqvae/diffusion_pytorch_model\.safetensors is missing"),
    (lambda f: shutil.rmtree(f / "vqvae"), r"vqvae/config\.json is missing"),
    (lambda f: _edit_vae_tensors(f, lambda t: t.update({"decoder.conv_in.weight": torch.zeros(16, 3, 1, 1)})),
     r"tensor 'decoder\.conv_in\.weight' is torch\.float32 \(16, 3, 1, 1\), but vqvae/config\.json implies a "
     r"float \(16, 3, 3, 3\)"),
    (lambda f: _edit_vae_tensors(f, lambda t: t.pop("encoder.conv_out.bias")),
     r"lacks tensor 'encoder\.conv_out\.bias'"),
    (lambda f: _edit_json(f, "vqvae/config.json", lambda c: c.update(scaling_factor=0)),
     r"vqvae/config\.json: scaling_factor=0\.0; the latent scale must be a positive number"),
    (lambda f: _edit_json(f, "model_index.json", lambda c: c.update(vqvae=["diffusers", "VQModel"])),
     r"component 'vqvae' is \['diffusers', 'VQModel'\]: only diffusers' AutoencoderKL"),
    (lambda f: _edit_json(f, "model_index.json", lambda c: c.pop("vqvae")),
     r"names no 'vqvae' component; LDMPipeline folders have unet/, scheduler/, vqvae/"),
    (lambda f: _edit_json(f, "model_index.json", lambda c: c.update(_class_name="DDIMPipeline")),
     r"a DDIMPipeline with an autoencoder component: a latent pipeline is imported as LDMPipeline"),
])
def test_bad_latent_folders_are_refused(runs, tmp_path, edit, match):
    folder = copy_folder(runs[2], tmp_path / "bad")
    edit(folder)
    _refused_import(folder, tmp_path, match)


def test_an_autoencoder_of_other_latents_is_refused(runs, tmp_path):
    """A well-formed AutoencoderKL whose latents (2 channels) are not what the UNet (3) denoises."""
    folder = copy_folder(runs[2], tmp_path / "bad")
    shutil.rmtree(folder / "vqvae")
    config = {k: v for k, v in read_json(runs[2] / "vqvae" / "config.json").items() if not k.startswith("_")}
    export_vae(AutoencoderKL(**{**config, "latent_channels": 2}), folder / "vqvae")
    _refused_import(folder, tmp_path, r"vqvae/config\.json: latent_channels=2 but unet/config\.json has in_channels=3")


def test_export_refuses_an_autoencoder_run_and_a_changed_autoencoder(runs, tmp_path):
    ae, lat, _ = runs
    with pytest.raises(InteropError, match=r"is an autoencoder run \(train-autoencoder\), which does not sample: "
                                           r"export the latent run"):
        export_diffusers(ae, tmp_path / "out")
    moved_ae, moved_lat = copy_folder(ae, tmp_path / "ae"), copy_folder(lat, tmp_path / "lat")
    _edit_json(moved_lat, "config.json", lambda c: c["latent"].update(run=str(moved_ae.resolve())))
    weights = checkpoint(moved_ae) / "ema.safetensors"
    tensors = load_file(str(weights))
    tensors["decoder.conv_out.bias"] = tensors["decoder.conv_out.bias"] * 2
    save_file(tensors, str(weights))
    with pytest.raises(InteropError, match=r"cannot export the latent run .*: the autoencoder run .* has changed"):
        export_diffusers(moved_lat, tmp_path / "out")
    shutil.rmtree(moved_ae)
    with pytest.raises(InteropError, match=r"cannot export the latent run .*: the autoencoder run .* is missing"):
        export_diffusers(moved_lat, tmp_path / "out")
    assert not any(p.startswith((".out", "out")) for p in listing(tmp_path))  # no export, no staging folder
