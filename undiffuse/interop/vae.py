"""The autoencoder of a latent run as a diffusers AutoencoderKL folder, and back.

The contract with ``undiffuse.latent.autoencoder.AutoencoderKL`` (being written on another branch):
its state_dict keys are diffusers' AutoencoderKL keys, its ``.config`` uses diffusers' setting names,
and ``AutoencoderKL.from_config(config)`` rebuilds it. So the folder is the config plus the state
dict, and nothing is renamed. (diffusers' own AutoencoderKL keeps the same contract, which is how
tests/test_interop_vae.py checks these functions without the latent branch.)

The folder is ``vqvae/``, not ``vae/``: LDMPipeline, diffusers' unconditional latent pipeline,
names its autoencoder component ``vqvae`` (and decodes ``latents / vqvae.config.scaling_factor``
with it, which an AutoencoderKL does too). Import reads either name.

Not wired yet: which runs are latent, and where their autoencoder and latent scale are recorded,
is decided by latent diffusion runs (`undiffuse train --autoencoder RUN`), not merged here;
``latent_autoencoder`` refuses such runs until then.
"""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from .diffusers_unet import DIFFUSERS_VERSION, InteropError
from .folders import check_tensors, read_config, read_tensors, write_json_file

__all__ = ["VAE_COMPONENT", "latent_autoencoder", "export_vae", "import_vae"]

#: The model_index.json component (and folder) that holds the autoencoder.
VAE_COMPONENT = "vqvae"
WEIGHTS = "diffusion_pytorch_model"


def latent_autoencoder(cfg: dict, run_dir: Path) -> nn.Module | None:
    """The autoencoder a run decodes its latents with, or None for a pixel-space run."""
    if cfg.get("latent") or cfg.get("autoencoder"):
        raise InteropError(f"{run_dir} is a latent run: exporting its autoencoder is not wired to latent runs yet "
                           "(undiffuse.latent is not on this branch); export_vae writes the folder once it is")
    return None


def export_vae(autoencoder: nn.Module, folder: Path, scaling_factor: float | None = None) -> None:
    """Write ``autoencoder`` as diffusers' ``folder/config.json`` and weights; ``scaling_factor``: the
    latent scale the run trained with, if it is not the autoencoder config's own."""
    config = {k: v for k, v in dict(autoencoder.config).items() if not k.startswith("_")}
    if scaling_factor is not None:
        config["scaling_factor"] = float(scaling_factor)
    write_json_file(folder / "config.json", {"_class_name": "AutoencoderKL", "_diffusers_version": DIFFUSERS_VERSION,
                                             **config})
    save_file({k: v.detach().contiguous() for k, v in autoencoder.state_dict().items()},
              str(folder / f"{WEIGHTS}.safetensors"))


def import_vae(folder: Path, cls: type | None = None) -> nn.Module:
    """The AutoencoderKL in diffusers' ``folder``, built by ``cls.from_config`` (default: undiffuse's),
    its tensors checked against the config (each problem names the tensor)."""
    path = folder / "config.json"
    config = read_config(path, "its autoencoder")
    if config.get("_class_name") != "AutoencoderKL":
        raise InteropError(f"{path}: _class_name={config.get('_class_name')!r}: only AutoencoderKL is imported "
                           "(a VQModel quantises its latents, which undiffuse's autoencoder does not)")
    cls = cls or _undiffuse_autoencoder()
    try:
        autoencoder = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    except (TypeError, ValueError) as e:
        raise InteropError(f"{path}: the autoencoder config does not build ({type(e).__name__}: {e})") from None
    tensors = read_tensors(folder, WEIGHTS)
    expected = {k: tuple(v.shape) for k, v in autoencoder.state_dict().items()}
    check_tensors(expected, tensors, folder / f"{WEIGHTS}.safetensors", f"{folder.name}/config.json")
    autoencoder.load_state_dict(tensors)
    return autoencoder


def _undiffuse_autoencoder() -> type:
    try:
        from ..latent.autoencoder import AutoencoderKL  # imported on demand: the latent package is optional here
    except ImportError:
        raise InteropError("importing an autoencoder needs undiffuse.latent.autoencoder, which this version of "
                           "undiffuse lacks") from None
    return AutoencoderKL
