"""The autoencoder folder of a latent export (``undiffuse.interop.vae``), checked against the contract
that undiffuse's AutoencoderKL keeps (diffusers' state_dict keys and config names, ``from_config``)
with diffusers' own AutoencoderKL, which keeps it by definition: what is written loads in diffusers,
and reads back bit for bit; a folder whose tensors do not fit its config is refused naming the tensor."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from undiffuse.interop.diffusers_unet import InteropError
from undiffuse.interop.vae import export_vae, import_vae

from helpers_interop import read_json, write_json

diffusers = pytest.importorskip("diffusers")

TINY = dict(in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1, latent_channels=2,
            norm_num_groups=8, sample_size=8, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2)


@pytest.fixture
def written(tmp_path):
    torch.manual_seed(0)
    ae = diffusers.AutoencoderKL(**TINY)
    export_vae(ae, tmp_path / "vqvae", scaling_factor=0.7)
    return ae, tmp_path / "vqvae"


def test_written_folder_loads_in_diffusers_and_reads_back(written):
    ae, folder = written
    loaded = diffusers.AutoencoderKL.from_pretrained(folder)
    assert loaded.config.scaling_factor == 0.7  # the run's latent scale, for LDMPipeline's decode
    back = import_vae(folder, cls=diffusers.AutoencoderKL)
    for k, v in ae.state_dict().items():
        assert torch.equal(back.state_dict()[k], v) and torch.equal(loaded.state_dict()[k], v)


def test_a_misshapen_tensor_is_named(written):
    _, folder = written
    path = folder / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tensors["encoder.conv_in.weight"] = torch.zeros(8, 1, 1, 1)
    save_file(tensors, str(path))
    with pytest.raises(InteropError, match=r"tensor 'encoder\.conv_in\.weight' is torch\.float32 \(8, 1, 1, 1\)"):
        import_vae(folder, cls=diffusers.AutoencoderKL)


def test_another_class_is_refused(written):
    _, folder = written
    cfg = read_json(folder / "config.json")
    write_json(folder / "config.json", {**cfg, "_class_name": "VQModel"})
    with pytest.raises(InteropError, match=r"_class_name='VQModel': only AutoencoderKL"):
        import_vae(folder, cls=diffusers.AutoencoderKL)
