"""`undiffuse import --from diffusers`: a diffusers pipeline folder as an undiffuse run directory.

Reads model_index.json (DDIMPipeline, DDPMPipeline or LDMPipeline), unet/config.json (UNet2DModel)
with unet/diffusion_pytorch_model.safetensors, scheduler/scheduler_config.json (DDIMScheduler or
DDPMScheduler) and, for LDMPipeline, vqvae/ (AutoencoderKL); writes config.json and
checkpoints/step-00000000/{model,ema}.safetensors (the same weights in both) with
checkpoints/latest, which ``undiffuse.load``, `undiffuse sample` and `undiffuse eval` read like a
trained run's. A latent pipeline's autoencoder becomes a train-autoencoder run in
``autoencoder/`` inside the run, which the run's "latent" entry records (``vae.py``). Every file is checked before anything is written, and
the run directory is written whole or not at all.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from torch import Tensor

from ..config import TrainConfig
from ..denoiser import Denoiser
from ..nets import UNet, build_net, net_config
from ..processes import from_config
from .diffusers_unet import InteropError, tensor_map, unet_from_diffusers
from .export import UNDIFFUSE_KEY
from .folders import (
    check_target, check_tensors, config_values, read_config, read_tensors, staged_folder, write_imported_checkpoint,
    write_json_file,
)
from .scheduler import SCHEDULERS, scheduler_from_diffusers
from .time_input import TABLE_ATOL, positional_settings, time_table
from .vae import AUTOENCODER_RUN, VAE_COMPONENT, read_latent_autoencoder, write_autoencoder_run

__all__ = ["import_diffusers", "NO_DATASET"]

#: train.data of an imported run whose dataset nobody named: `undiffuse eval` then says it is unknown.
NO_DATASET = "unknown (imported from diffusers: pass --data at import to evaluate against a dataset)"


def import_diffusers(src: str | Path, out: str | Path, *, data: str | None = None) -> Path:
    """Read the diffusers folder ``src`` into a new run directory ``out`` (new or empty); returns
    ``out``. ``data``: the dataset the model was trained on, for `undiffuse eval` (default: what an
    undiffuse export recorded, else unknown)."""
    src, out = Path(src), Path(out)
    check_target(out, "--out")  # before any reading: fail fast
    if not src.is_dir():
        raise InteropError(f"{src} is not a folder: expected a diffusers pipeline folder (model_index.json, "
                           "unet/, scheduler/)")
    index = read_config(src / "model_index.json", "a pipeline")
    latent = _check_index(index, src / "model_index.json")
    sched_path = src / "scheduler" / "scheduler_config.json"
    sched_cfg = read_config(sched_path, "its scheduler")
    with config_values(sched_path):
        process_cfg, denoiser_cfg = scheduler_from_diffusers(sched_cfg, sched_path)
        process = from_config(process_cfg)
    net = _read_unet(src / "unet", process)
    vae = read_latent_autoencoder(src, net.in_channels, net.image_size) if latent else None
    denoiser = Denoiser(net, process, denoiser_cfg["prediction"], clip_x0=denoiser_cfg["clip_x0"])
    meta = index.get(UNDIFFUSE_KEY) if isinstance(index.get(UNDIFFUSE_KEY), dict) else {}
    config = _run_config(net, process_cfg, denoiser_cfg, meta, data, src, out, latent)
    with staged_folder(out, "--out") as tmp:
        if vae is not None:  # first: the latent entry records the sha256 of the weights written
            config["latent"] = write_autoencoder_run(tmp / AUTOENCODER_RUN, *vae, config["train"]["data"], src,
                                                     out.resolve() / AUTOENCODER_RUN)
        write_json_file(tmp / "config.json", config)
        write_imported_checkpoint(tmp, denoiser.state_dict())
    return out


def _read_unet(folder: Path, process) -> UNet:
    """Our U-Net with the weights of the UNet2DModel in ``folder``, every setting and tensor checked."""
    where = folder / "config.json"
    unet_cfg = read_config(where, "its UNet")
    if unet_cfg.get("_class_name") != "UNet2DModel":
        raise InteropError(f"{where}: _class_name={unet_cfg.get('_class_name')!r}: only UNet2DModel is imported "
                           "(UNet2DConditionModel's transformer blocks have no undiffuse counterpart)")
    learned = unet_cfg.get("time_embedding_type", "positional") == "learned"
    if learned and unet_cfg.get("num_train_timesteps") != process.num_steps:
        raise InteropError(f"{where}: num_train_timesteps={unet_cfg.get('num_train_timesteps')!r} (rows of the "
                           f"learned time table) differs from the scheduler's {process.num_steps}")
    with config_values(where):
        net_cfg = unet_from_diffusers(unet_cfg, str(where))
        net = build_net({**net_cfg, **({} if learned else positional_settings(process.num_steps))})
    tensors = read_tensors(folder, "diffusion_pytorch_model")
    weights_path = folder / "diffusion_pytorch_model.safetensors"
    _load_unet(net, tensors, weights_path, process.num_steps if learned else None)
    if learned:
        _check_time_table(tensors["time_proj.weight"], net, process, weights_path)
    return net


def _check_index(index: dict, path: Path) -> bool:
    """Refuse a pipeline this importer does not read; True for a latent one (LDMPipeline)."""
    cls = index.get("_class_name")
    latent = cls == "LDMPipeline"
    if not latent and cls not in SCHEDULERS.values():
        raise InteropError(f"{path}: _class_name={cls!r}: only {sorted(SCHEDULERS.values())} and LDMPipeline "
                           "folders are imported")
    if not latent and (index.get("vae") is not None or index.get(VAE_COMPONENT) is not None):
        raise InteropError(f"{path}: a {cls} with an autoencoder component: a latent pipeline is imported as "
                           "LDMPipeline (components unet, scheduler, vqvae)")
    parts = ("unet", "scheduler", VAE_COMPONENT) if latent else ("unet", "scheduler")
    for part in parts:
        if index.get(part) is None:
            raise InteropError(f"{path} names no {part!r} component; {cls} folders have "
                               f"{', '.join(p + '/' for p in parts)}")
    if latent and index[VAE_COMPONENT] != ["diffusers", "AutoencoderKL"]:
        raise InteropError(f"{path}: component {VAE_COMPONENT!r} is {index[VAE_COMPONENT]!r}: only diffusers' "
                           "AutoencoderKL is imported (a VQModel quantises its latents, which undiffuse's "
                           "autoencoder does not)")
    return latent


def _load_unet(net: UNet, tensors: dict[str, Tensor], path: Path, table_rows: int | None) -> None:
    """Load diffusers' tensors into ``net`` once ``check_tensors`` accepts them (``table_rows``: the
    steps of a learned time table, whose values ``_check_time_table`` checks)."""
    ours = net.state_dict()
    pairs = tensor_map(net)
    expected = {name: shape for p in pairs for name, shape in zip(p.theirs, p.their_shapes(ours[p.ours].shape))}
    if table_rows is not None:
        expected["time_proj.weight"] = (table_rows, net.time_emb.channels)
    check_tensors(expected, tensors, path, "unet/config.json")
    net.load_state_dict({p.ours: p.to_ours([tensors[n] for n in p.theirs], ours[p.ours].shape) for p in pairs})


def _check_time_table(table: Tensor, net: UNet, process, path: Path) -> None:
    """A learned time table is accepted when it is our sinusoid at our labels (an undiffuse export):
    our U-Net computes it, so the table itself is not kept."""
    ours = time_table(net, process)
    if float((table.float() - ours).abs().max()) > TABLE_ATOL:
        raise InteropError(f"{path}: tensor 'time_proj.weight' is a learned time table that is not undiffuse's "
                           "sinusoid of its noise labels (an undiffuse export's); our U-Net embeds time "
                           "sinusoidally and has no learned table")


def _run_config(net: UNet, process_cfg: dict, denoiser_cfg: dict, meta: dict, data: str | None, src: Path,
                out: Path, latent: bool) -> dict:
    """config.json of the imported run, in the layout the trainer writes (a latent run's "latent" entry
    is added once its autoencoder is written)."""
    recorded = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    classes = net.num_classes
    names = recorded.get("class_names") if recorded.get("num_classes") == classes else None
    dataset = data or meta.get("dataset") or NO_DATASET
    net_cfg = net_config(net)
    train = TrainConfig(data=dataset, net=net_cfg, process=process_cfg, prediction=denoiser_cfg["prediction"],
                        clip_x0=denoiser_cfg["clip_x0"], class_conditional=classes is not None,
                        out=str(out), autoencoder=str(out.resolve() / AUTOENCODER_RUN) if latent else None)
    return {"train": asdict(train), "net": net_cfg,
            "process": process_cfg, "denoiser": denoiser_cfg,
            "data": {"name": dataset, "shape": [net.in_channels, net.image_size, net.image_size],
                     "num_classes": classes, "class_names": names},
            "text": None, "imported_from": {"diffusers": str(src.resolve())}}
