"""An autoencoder run read back for latent diffusion, and the record a latent run keeps of it.

A latent run's config.json holds a "latent" entry: the autoencoder run's path (absolute for a trained
run; relative to the latent run for an imported one, which carries its autoencoder inside it, so the
pair moves as one folder), the sha256 of the weights it encoded with, their checkpoint step, the latent scale it trained with, and the image and
latent shapes. Loading or resuming the latent run checks the autoencoder against that record and
refuses one that is missing or has changed (retrained, overwritten): its latents would mean
something else, and decoding would give wrong images without any error.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..checkpoint import latest_checkpoint, read_json
from ..run_files import load_checked
from .autoencoder import AutoencoderKL


def weights_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_autoencoder(run: str | Path) -> tuple[AutoencoderKL, dict]:
    """The EMA autoencoder of a `undiffuse train-autoencoder` run (in eval mode, its ``scaling_factor``
    the measured one) and its record: {"run", "sha256", "step", "scaling_factor"}."""
    run = Path(run)
    hint = f"train one with `undiffuse train-autoencoder --out {run}`"
    if not (run / "config.json").is_file():
        raise FileNotFoundError(f"autoencoder run {run} does not exist (no {run / 'config.json'}); {hint}")
    cfg = read_json(run / "config.json")
    if not isinstance(cfg, dict) or (cfg.get("process") or {}).get("type") != "autoencoder":
        raise ValueError(f"{run} is not an autoencoder run (its config.json does not describe one); give the --out "
                         "of `undiffuse train-autoencoder`")
    entry, ckpt = cfg.get("autoencoder"), latest_checkpoint(run)
    if ckpt is None or not isinstance(entry, dict):
        raise ValueError(f"autoencoder run {run} has not finished: it has no checkpoint or no measured latent scale "
                         f"(config.json's 'autoencoder' entry, written at the end of training); finish it with "
                         f"`undiffuse train-autoencoder --out {run} --resume`")
    ae = AutoencoderKL.from_config({**cfg["net"], "scaling_factor": entry["scaling_factor"]})
    weights = ckpt / "ema.safetensors"
    load_checked(ae, weights)
    record = {"run": str(run.resolve()), "sha256": weights_sha256(weights), "step": int(entry["step"]),
              "scaling_factor": float(entry["scaling_factor"])}
    return ae.eval(), record


def recorded_path(recorded: dict, run_dir: Path) -> Path:
    """The autoencoder run a "latent" entry names: a relative path is inside (relative to) ``run_dir``."""
    return Path(run_dir) / recorded["run"]  # an absolute "run" stays as it is


def load_recorded_autoencoder(recorded: dict | None, run_dir: Path) -> AutoencoderKL:
    """The autoencoder a latent run in ``run_dir`` was trained with (its config.json's "latent" entry),
    refused when missing or changed since; its ``scaling_factor`` is the recorded one."""
    if (not isinstance(recorded, dict) or not {"run", "sha256", "scaling_factor"} <= set(recorded)
            or not isinstance(recorded["run"], str)):
        raise ValueError(f"{run_dir / 'config.json'} has no complete 'latent' entry (autoencoder run, sha256, "
                         "scaling_factor), so its latents cannot be decoded; restore the file from the run")
    where = recorded_path(recorded, run_dir)
    try:
        ae, now = load_autoencoder(where)
    except FileNotFoundError:
        raise FileNotFoundError(f"the autoencoder run {where} that {run_dir} was trained on is missing; "
                                "restore it at that path (the latent run cannot decode without it)") from None
    if now["sha256"] != recorded["sha256"]:
        raise ValueError(f"the autoencoder run {where} has changed since {run_dir} was trained on its "
                         f"latents (weights sha256 {recorded['sha256'][:12]}... at step {recorded.get('step')}, now "
                         f"{now['sha256'][:12]}... at step {now['step']}): its latents mean something else now. "
                         "Restore that autoencoder, or train a new latent run (another --out) on this one")
    ae.config["scaling_factor"] = float(recorded["scaling_factor"])
    return ae
