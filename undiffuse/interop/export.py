"""`undiffuse export --to diffusers`: a run directory as a diffusers pipeline folder.

    OUT/model_index.json                        DDIMPipeline (or DDPMPipeline)
    OUT/unet/config.json                        UNet2DModel
    OUT/unet/diffusion_pytorch_model.safetensors
    OUT/scheduler/scheduler_config.json         DDIMScheduler (or DDPMScheduler)
    OUT/vqvae/config.json                       latent runs (LDMPipeline): AutoencoderKL, its scaling_factor
    OUT/vqvae/diffusion_pytorch_model.safetensors   the run's latent scale (``vae.py``)

``DDIMPipeline.from_pretrained(OUT)`` (``LDMPipeline`` for a latent run) then samples what undiffuse
samples. Everything is checked
before anything is written, and the folder is written whole or not at all (``folders.staged_folder``).
"""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from ..checkpoint import latest_checkpoint
from ..cold import is_cold
from ..denoiser import Denoiser
from ..processes import from_config
from ..run_files import build_run_net, is_autoencoder_run, load_checked, read_run_config
from .diffusers_unet import DIFFUSERS_VERSION, InteropError, check_exportable, tensor_map, unet_to_diffusers
from .folders import check_target, staged_folder, write_json_file
from .scheduler import SCHEDULERS, scheduler_to_diffusers
from .time_input import is_positional, time_table
from .vae import VAE_COMPONENT, export_vae, latent_autoencoder

__all__ = ["export_diffusers", "UNDIFFUSE_KEY"]

#: model_index.json entry (private to diffusers: keys starting with "_" are not components) that
#: tells ``import`` what the run was trained on, so an imported run can be evaluated against it.
UNDIFFUSE_KEY = "_undiffuse"


def export_diffusers(run_dir: str | Path, out: str | Path, *, weights: str = "ema",
                     scheduler: str = "DDIMScheduler") -> Path:
    """Write ``run_dir``'s ``weights`` ("ema" or "model") as a diffusers folder at ``out`` (new or
    empty); returns ``out``. Refuses, naming the layer or setting, what diffusers cannot express."""
    run_dir, out = Path(run_dir), Path(out)
    if weights not in ("ema", "model"):
        raise InteropError(f"weights must be 'ema' (the default) or 'model' (the raw weights), got {weights!r}")
    if scheduler not in SCHEDULERS:
        raise InteropError(f"scheduler must be one of {sorted(SCHEDULERS)}, got {scheduler!r}")
    check_target(out, "the export target")  # before any reading: fail fast
    cfg = read_run_config(run_dir)
    if is_cold(cfg["process"]):
        raise InteropError(f"process {cfg['process'].get('type')!r} is a cold degradation: a "
                           "restorer R(x_t, t) sampled by Bansal et al.'s algorithms, which no diffusers "
                           "scheduler runs")
    if is_autoencoder_run(cfg):
        raise InteropError(f"{run_dir} is an autoencoder run (train-autoencoder), which does not sample: export "
                           f"the latent run trained on it (`undiffuse train --autoencoder {run_dir}`), whose "
                           "folder holds the autoencoder as vqvae/")
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise InteropError(f"{run_dir} has no checkpoint yet (checkpoints/latest is missing): nothing to export")
    process = from_config(cfg["process"])
    sched = scheduler_to_diffusers(process, cfg["denoiser"], scheduler)
    net = build_run_net(cfg, run_dir / "config.json")
    check_exportable(net)
    denoiser = Denoiser(net, process)
    load_checked(denoiser, ckpt / f"{weights}.safetensors")  # the run's own checks
    autoencoder = latent_autoencoder(denoiser, cfg, run_dir)  # None for a pixel-space run
    positional = is_positional(net, process)
    tensors = _unet_tensors(net)
    if not positional:
        tensors["time_proj.weight"] = time_table(net, process)
    unet = unet_to_diffusers(net, "positional" if positional else "learned", process.num_steps)
    index = _model_index(scheduler, cfg, autoencoder is not None)
    with staged_folder(out, "the export target") as tmp:
        write_json_file(tmp / "model_index.json", index)
        write_json_file(tmp / "unet" / "config.json", unet)
        save_file(tensors, str(tmp / "unet" / "diffusion_pytorch_model.safetensors"))
        write_json_file(tmp / "scheduler" / "scheduler_config.json", sched)
        if autoencoder is not None:
            export_vae(autoencoder, tmp / VAE_COMPONENT)
    return out


def _unet_tensors(net) -> dict[str, Tensor]:
    sd = net.state_dict()
    tensors: dict[str, Tensor] = {}
    for pair in tensor_map(net):
        for name, t in zip(pair.theirs, pair.to_theirs(sd[pair.ours])):
            tensors[name] = t.detach().contiguous()
    return tensors


def _model_index(scheduler: str, cfg: dict, latent: bool) -> dict:
    index = {"_class_name": SCHEDULERS[scheduler], "_diffusers_version": DIFFUSERS_VERSION,
             "scheduler": ["diffusers", scheduler], "unet": ["diffusers", "UNet2DModel"],
             UNDIFFUSE_KEY: {"data": cfg["data"], "dataset": cfg["train"]["data"]}}
    if latent:
        index.update(_class_name="LDMPipeline", **{VAE_COMPONENT: ["diffusers", "AutoencoderKL"]})
    return index
