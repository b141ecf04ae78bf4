"""The autoencoder of a latent run as a diffusers AutoencoderKL folder, and back.

``undiffuse.latent.autoencoder.AutoencoderKL`` keeps diffusers' contract: its state_dict keys are
diffusers' AutoencoderKL keys, its ``.config`` uses diffusers' setting names, and
``AutoencoderKL.from_config(config)`` rebuilds it. So the folder is the config plus the state dict,
and nothing is renamed (tests/test_interop_vae.py checks both directions with diffusers' own class).

The folder is ``vqvae/``: LDMPipeline, diffusers' unconditional latent pipeline, names its
autoencoder component ``vqvae`` and decodes ``vqvae.decode(latents / vqvae.config.scaling_factor)``,
which an AutoencoderKL does as well as a VQModel. So an export writes the latent scale the run
trained with (its config.json's "latent" entry) as the folder's ``scaling_factor``.

An import writes the autoencoder as a `undiffuse train-autoencoder` run (``write_autoencoder_run``)
inside the imported latent run, at ``AUTOENCODER_RUN``, and the latent run's "latent" entry records it
by that relative path with the sha256 of its weights: the pair moves as one folder, and loading still
refuses an autoencoder that changed since (``undiffuse.latent.runs``).
"""
from __future__ import annotations

import math
from dataclasses import asdict
from numbers import Real
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from ..config import TrainConfig
from .diffusers_unet import DIFFUSERS_VERSION, InteropError
from .folders import check_tensors, read_config, read_tensors, write_imported_checkpoint, write_json_file

__all__ = ["VAE_COMPONENT", "AUTOENCODER_RUN", "latent_autoencoder", "export_vae", "import_vae",
           "read_latent_autoencoder", "write_autoencoder_run"]

#: The model_index.json component (and folder) that holds the autoencoder.
VAE_COMPONENT = "vqvae"
WEIGHTS = "diffusion_pytorch_model"
#: Where an imported latent run keeps its autoencoder run (recorded relative to the latent run).
AUTOENCODER_RUN = "autoencoder"


def latent_autoencoder(denoiser: nn.Module, cfg: dict, run_dir: Path) -> nn.Module | None:
    """The autoencoder a latent run decodes with, its ``scaling_factor`` the run's latent scale, checked
    as loading the run checks it (missing, changed, or not encoding to the run's latent shape: refused);
    None for a pixel-space run."""
    if cfg.get("latent") is None:
        return None
    from ..latent.pipeline import load_latent_pipeline  # on demand: pixel exports need none of it

    try:
        return load_latent_pipeline(denoiser, cfg, run_dir).autoencoder
    except (ValueError, FileNotFoundError) as e:
        raise InteropError(f"cannot export the latent run {run_dir}: {e}") from None


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


def read_latent_autoencoder(src: Path, latent_channels: int, latent_side: int) -> tuple[nn.Module, list[int]]:
    """The autoencoder in ``src/vqvae`` (an LDMPipeline folder), checked to decode the UNet's latents
    (``latent_channels`` x ``latent_side``^2), and the shape of the images it decodes them to."""
    folder = src / VAE_COMPONENT
    ae = import_vae(folder)
    where, config = folder / "config.json", ae.config
    scale = config["scaling_factor"]
    if not (isinstance(scale, Real) and math.isfinite(scale) and scale > 0):
        raise InteropError(f"{where}: scaling_factor={scale!r}; the latent scale must be a positive number "
                           "(LDMPipeline decodes latents / scaling_factor)")
    if config["latent_channels"] != latent_channels:
        raise InteropError(f"{where}: latent_channels={config['latent_channels']} but unet/config.json has "
                           f"in_channels={latent_channels}: the UNet does not denoise this autoencoder's latents")
    side = latent_side * ae.factor
    return ae, [config["in_channels"], side, side]


def write_autoencoder_run(run_dir: Path, ae: nn.Module, image_shape: list[int], dataset: str, src: Path,
                          final: Path) -> dict:
    """Write ``ae`` into ``run_dir`` as a finished `undiffuse train-autoencoder` run would be (config.json
    with its "autoencoder" entry, the checkpoint: ``latent.runs.load_autoencoder`` reads it); ``final``:
    where ``run_dir`` ends up. Returns the "latent" entry of the latent run that holds it."""
    from ..latent.runs import weights_sha256
    from ..nets import net_config

    scale = float(ae.config["scaling_factor"])
    net = net_config(ae)
    train = TrainConfig(data=dataset, net=net, autoencoder_training=True, out=str(final))
    write_json_file(run_dir / "config.json", {
        "train": asdict(train), "net": net, "process": {"type": "autoencoder"},
        "denoiser": {"type": "autoencoder_kl", "factor": ae.factor},
        "data": {"name": dataset, "shape": image_shape, "num_classes": None, "class_names": None}, "text": None,
        "autoencoder": {"scaling_factor": scale, "step": 0},
        "imported_from": {"diffusers": str((src / VAE_COMPONENT).resolve())}})
    ckpt = write_imported_checkpoint(run_dir, ae.state_dict())
    side = image_shape[1] // ae.factor
    return {"run": AUTOENCODER_RUN, "sha256": weights_sha256(ckpt / "ema.safetensors"), "step": 0,
            "scaling_factor": scale, "image_shape": image_shape,
            "latent_shape": [ae.config["latent_channels"], side, side], "encoded": "imported from diffusers"}


def _undiffuse_autoencoder() -> type:
    try:
        from ..latent.autoencoder import AutoencoderKL  # imported on demand: the latent package is optional here
    except ImportError:
        raise InteropError("importing an autoencoder needs undiffuse.latent.autoencoder, which this version of "
                           "undiffuse lacks") from None
    return AutoencoderKL
