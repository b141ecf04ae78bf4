"""Training throughput and FLOPs of candidate U-Nets for the MNIST demo (docs/mnist_recipe.md).

    python bench/net_candidates.py

One training step = diffusion_loss (eps, cosine DDPM) + backward + AdamW, batch 128, bf16 autocast,
NCHW; FLOPs of one image's forward + backward from torch's FlopCounterMode.
"""
from __future__ import annotations

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from undiffuse.denoiser import Denoiser
from undiffuse.losses import diffusion_loss
from undiffuse.nets import build_net
from undiffuse.processes import make_process

BASE = dict(type="unet", in_channels=1, image_size=32, channels=32, channel_mult=(1, 2, 2),
            num_res_blocks=1, attn_resolutions=(16,), dropout=0.0, num_classes=10)
CANDIDATES = {
    "32 ch, (1,2,2), attn 16 (mnist-small)": {},
    "32 ch, (1,2,2), attn 8": dict(attn_resolutions=(8,)),
    "32 ch, (1,2,4), attn 8 (mnist-demo)": dict(channel_mult=(1, 2, 4), attn_resolutions=(8,)),
    "48 ch, (1,2,2), attn 8": dict(channels=48, attn_resolutions=(8,)),
    "32 ch, (1,2,4), 2 blocks, attn 8": dict(channel_mult=(1, 2, 4), num_res_blocks=2, attn_resolutions=(8,)),
    "64 ch, (1,2,2), attn 8": dict(channels=64, attn_resolutions=(8,)),
}


def measure(cfg: dict, batch: int = 128, repeats: int = 4) -> tuple[float, float, float]:
    net = build_net(cfg)
    den = Denoiser(net, make_process("ddpm:cosine:1000"))
    opt = torch.optim.AdamW(den.parameters(), 1e-3)
    x, y = torch.randn(batch, 1, 32, 32), torch.randint(0, 10, (batch,))
    for i in range(repeats + 2):
        if i == 2:
            t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = diffusion_loss(den, x, y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    rate = batch * repeats / (time.perf_counter() - t0)
    with FlopCounterMode(display=False) as counter:
        net(x[:1], torch.ones(1), y[:1]).sum().backward()
    params = sum(p.numel() for p in net.parameters()) / 1e6
    return params, rate, counter.get_total_flops() / 1e9


def main() -> None:
    print("| network | parameters (M) | train images/s | GFLOP/image | GFLOP/s |")
    print("|---|---|---|---|---|")
    for name, change in CANDIDATES.items():
        params, rate, gflop = measure({**BASE, **change})
        print(f"| {name} | {params:.2f} | {rate:.0f} | {gflop:.2f} | {rate * gflop:.0f} |", flush=True)


if __name__ == "__main__":
    main()
