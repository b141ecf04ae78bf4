"""`undiffuse train-autoencoder`: the KL autoencoder of latent diffusion, trained by the shared
Trainer (``objective.py``), with train's run directory, checkpoints, --resume and --overwrite.

    undiffuse train-autoencoder --out runs/ae                  # kl-f4 on 64x64 shapes
    undiffuse train --autoencoder runs/ae --net text-small ... # diffusion on its latents
"""
from __future__ import annotations

import argparse
import sys
import time

from ..cli_flags import add_config_flags
from ..config import TrainConfig

#: The defaults of train-autoencoder: the KL autoencoder of latent diffusion, factor 4, on 64x64 colour
#: shapes (docs/latent.md). Not a preset of `undiffuse train`, which trains denoisers.
AUTOENCODER_DEFAULTS = TrainConfig(data="shapes", image_size=64, net="kl-f4", autoencoder_training=True,
                                   loss="l1", batch_size=16, lr=1e-3, warmup_steps=100, max_train_steps=3000,
                                   class_conditional=False, sample_every=1000, checkpoint_every=500,
                                   out="runs/autoencoder")

#: The train flags that mean something for an autoencoder (the rest are about denoising).
AUTOENCODER_FLAGS = {"data", "image_size", "channels", "on_bad_image", "net", "loss", "kl_weight",
                     "max_train_steps", "batch_size", "lr", "lr_schedule", "warmup_steps", "weight_decay", "grad_clip",
                     "ema_decay", "bf16", "channels_last", "compile", "device", "seed", "max_minutes", "out",
                     "log_every", "checkpoint_every", "sample_every"}


def add_train_autoencoder(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train-autoencoder", help="train the KL autoencoder of latent diffusion",
                       description="Train a KL autoencoder (latent diffusion's, diffusers' AutoencoderKL layout) on "
                                   "images: L1 (or L2) reconstruction plus --kl-weight times the KL. At the end the "
                                   "latent scale (1 / std of the latents) and held-out PSNR / SSIM go into the run's "
                                   "config.json. Then: `undiffuse train --autoencoder RUN`. By default kl-f4 on 64x64 "
                                   "shapes (--net kl-f8: factor 8).")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in --out and start over")
    add_config_flags(p, only=AUTOENCODER_FLAGS, defaults=AUTOENCODER_DEFAULTS)
    return p


def autoencoder_config(args: argparse.Namespace) -> TrainConfig:
    """AUTOENCODER_DEFAULTS with each flag given."""
    given = {name: getattr(args, name) for name in AUTOENCODER_FLAGS if getattr(args, name, None) is not None}
    return AUTOENCODER_DEFAULTS.updated(**given)


def cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..rundir import check_run_dir
    from ..trainer import NonFiniteLossError, Trainer

    cfg = autoencoder_config(args)
    check_run_dir(cfg.out, resume=args.resume, overwrite=args.overwrite)  # before the data loads
    t0 = time.perf_counter()
    with distributed.process_group(cfg.device):
        trainer = Trainer(cfg, overwrite=args.overwrite)
        if args.resume and trainer.resume() and distributed.is_main():
            print(f"resumed {cfg.out} at step {trainer.step}")
        try:
            trainer.fit()
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if distributed.is_main():
        from ..checkpoint import read_json

        entry = read_json(trainer.run_dir / "config.json")["autoencoder"]
        rec = entry["reconstruction_heldout"]
        print(f"trained {trainer.step} steps in {time.perf_counter() - t0:.0f} s; run directory: {cfg.out}\n"
              f"  latent scale {entry['scaling_factor']:.4f}; held-out reconstruction: PSNR {rec['psnr_db']:.2f} dB, "
              f"SSIM {rec['ssim']:.4f}" + (f", FID-style {rec['fid_recon']:.2f}" if "fid_recon" in rec else "")
              + f"\n  picture: {trainer.run_dir / 'samples' / 'final.png'} (held-out originals above reconstructions)")
    return 0
