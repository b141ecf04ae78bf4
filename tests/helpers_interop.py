"""Shared set-up of the diffusers interop tests: tiny trained runs, and reading a folder's files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from undiffuse.config import TrainConfig
from undiffuse.trainer import Trainer

#: A U-Net that UNet2DModel expresses: 8 groups divide every channel count, heads of 8 everywhere.
TINY_NET = dict(type="unet", in_channels=1, image_size=8, channels=8, channel_mult=[1, 2], num_res_blocks=1,
                attn_resolutions=[4], num_groups=8, dropout=0.0, head_dim=8)

#: Two runs that cover the maps: eps / linear / additive embedding / unconditional, and
#: v / cosine / scale-shift / class labels. EMA 0.9 over 20 steps makes EMA and raw weights differ.
RUNS = {
    "eps-linear": dict(net={**TINY_NET, "scale_shift": False}, process="ddpm:linear:1000", prediction="eps",
                       class_conditional=False),
    "v-cosine-classes": dict(net=TINY_NET, process="ddpm:cosine:1000", prediction="v", class_conditional=True),
}


def train_tiny(out: Path, **settings) -> Path:
    """A 20-step run on sklearn's 8x8 digits (about 5 s on one core)."""
    cfg = TrainConfig(data="digits", max_train_steps=20, batch_size=16, bf16=False, ema_decay=0.9, warmup_steps=2,
                      sample_every=0, num_samples=4, sample_steps=2, log_every=10, checkpoint_every=20,
                      out=str(out), **settings)
    Trainer(cfg).fit(progress=False)
    return out


def checkpoint(run: Path) -> Path:
    return run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj))


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_unet_tensors(folder: Path, edit, part: str = "unet") -> None:
    """Rewrite folder/part's safetensors (the UNet's by default) with ``edit(tensors)`` applied (in
    place on the dict)."""
    path = folder / part / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def listing(folder: Path) -> list[str]:
    """Every path under ``folder`` (to check that a refusal wrote nothing)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())
