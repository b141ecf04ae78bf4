"""Training throughput (images/s) of undiffuse's U-Nets against Hugging Face diffusers' UNet2DModel,
side by side in one run on this machine, in fp32 and bf16 autocast, NCHW and channels-last.

    python bench/train_throughput.py                 # the default MNIST U-Net vs a matched diffusers net
    python bench/train_throughput.py --batch 64 --repeats 5

diffusers is a benchmark-only extra (`pip install -e '.[bench]'`); every model is trained with the
same AdamW step on the same eps-prediction loss with the same batch.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from undiffuse.config import preset
from undiffuse.nets import build_net


def count(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def undiffuse_net(num_classes: int = 10) -> torch.nn.Module:
    cfg = preset("mnist")
    return build_net(cfg.net, in_channels=1, out_channels=1, image_size=32, num_classes=num_classes)


def diffusers_net(block_out_channels, attn_level: int | None, num_classes: int = 10):
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if i == attn_level else "DownBlock2D" for i in range(len(block_out_channels)))
    up = tuple("AttnUpBlock2D" if len(block_out_channels) - 1 - i == attn_level else "UpBlock2D"
               for i in range(len(block_out_channels)))
    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=tuple(block_out_channels), down_block_types=down,
                       up_block_types=up, num_class_embeds=num_classes,
                       norm_num_groups=min(32, block_out_channels[0]))


def step_fn(model, kind: str):
    """One eps-prediction training step for either family of network."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x, t, y, bf16: bool):
        noise = torch.randn_like(x)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if kind == "diffusers":
                out = model(x + noise, t, class_labels=y).sample
            else:
                out = model(x + noise, t.float(), y)
            loss = F.mse_loss(out.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def measure(model, kind: str, batch: int, bf16: bool, channels_last: bool, repeats: int) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(batch, 1, 32, 32).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (batch,))
    y = torch.randint(0, 10, (batch,))
    step = step_fn(model, kind)
    for _ in range(2):
        step(x, t, y, bf16)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step(x, t, y, bf16)
    return repeats * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--modes", default="fp32,bf16,bf16+cl", help="fp32, bf16, fp32+cl, bf16+cl")
    args = ap.parse_args()
    torch.manual_seed(0)
    models = [("undiffuse default MNIST U-Net", "undiffuse", undiffuse_net())]
    try:
        # Same widths and resolutions as mnist-demo, attention at 8x8: 2.74M vs 2.86M parameters.
        models.append(("diffusers UNet2DModel (matched)", "diffusers", diffusers_net((32, 64, 128), attn_level=2)))
    except ImportError:
        print("diffusers not installed: pip install -e '.[bench]' to compare against it")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    modes = args.modes.split(",")
    print("| model | params (M) | " + " | ".join(f"{m} img/s" for m in modes) + " |")
    print("|---|---|" + "---|" * len(modes))
    for name, kind, model in models:
        rates = [measure(model, kind, args.batch, "bf16" in m, "+cl" in m, args.repeats) for m in modes]
        print(f"| {name} | {count(model):.2f} | " + " | ".join(f"{r:.0f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
