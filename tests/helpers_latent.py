"""Shared set-up of the latent diffusion tests (test_latent_training.py, test_interop_latent.py): the
configs of a tiny autoencoder run and of a tiny latent run on it, trained in seconds on the CPU."""
from __future__ import annotations

from pathlib import Path

from undiffuse.config import TrainConfig

SMALL = dict(max_train_steps=4, batch_size=8, lr=2e-3, warmup_steps=2, log_every=1, checkpoint_every=2, bf16=False)


def ae_cfg(out: Path, **changes) -> TrainConfig:
    return TrainConfig(data="digits", image_size=16, net="kl-f4", autoencoder_training=True, sample_every=2,
                       out=str(out), **SMALL).updated(**changes)


def latent_cfg(out: Path, autoencoder: Path, **changes) -> TrainConfig:
    net = {"type": "unet", "channels": 16, "channel_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (2,),
           "dropout": 0.1}  # network dropout: resume must restore torch's global RNG too
    return TrainConfig(data="digits", image_size=16, net=net, autoencoder=str(autoencoder), sample_every=2,
                       num_samples=4, sample_steps=2, label_dropout=0.3, out=str(out), **SMALL).updated(**changes)
