"""`undiffuse export --run DIR --to diffusers OUT` and `undiffuse import --from diffusers DIR --out RUN`."""
from __future__ import annotations

import argparse

__all__ = ["add_cli", "cmd_export", "cmd_import"]

FORMATS = ("diffusers",)


def add_cli(sub) -> None:
    p = sub.add_parser("export", help="write a run as a diffusers pipeline folder",
                       description="Write a run's weights (EMA by default) as a diffusers folder: "
                                   "model_index.json, unet/ (UNet2DModel), scheduler/ (DDIM or DDPM); a latent run "
                                   "also vqvae/ (AutoencoderKL), as an LDMPipeline. "
                                   "What diffusers cannot express is refused, naming the layer or setting "
                                   "(docs/interop.md).")
    p.add_argument("--run", required=True, help="run directory written by `undiffuse train`")
    p.add_argument("--to", required=True, choices=FORMATS, help="the format to write")
    p.add_argument("out", metavar="OUT", help="the folder to write (new, or empty)")
    p.add_argument("--weights", choices=("ema", "model"), default="ema",
                   help="ema (default): the weights undiffuse samples with; model: the raw trained weights")
    p.add_argument("--scheduler", choices=("ddim", "ddpm"), default="ddim",
                   help="the scheduler (and pipeline) to write: DDIMScheduler/DDIMPipeline (default) or "
                        "DDPMScheduler/DDPMPipeline")
    p = sub.add_parser("import", help="read a diffusers pipeline folder into a run directory",
                       description="Read a diffusers DDPM/DDIM pipeline folder (UNet2DModel, safetensors) into "
                                   "a run directory that `undiffuse sample` and `undiffuse eval` accept. An "
                                   "LDMPipeline folder becomes a latent run with its autoencoder run in "
                                   "OUT/autoencoder.")
    p.add_argument("--from", dest="source_format", required=True, choices=FORMATS, help="the format to read")
    p.add_argument("source", metavar="DIR", help="the diffusers folder (model_index.json, unet/, scheduler/)")
    p.add_argument("--out", required=True, help="the run directory to write (new, or empty)")
    p.add_argument("--data", default=None,
                   help="the dataset the model was trained on, for `undiffuse eval` (default: what an undiffuse "
                        "export recorded; else none)")


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_diffusers

    out = export_diffusers(args.run, args.out, weights=args.weights, scheduler=f"{args.scheduler.upper()}Scheduler")
    print(f"exported {args.run} ({args.weights} weights) -> {out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .import_ import import_diffusers

    out = import_diffusers(args.source, args.out, data=args.data)
    print(f"imported {args.source} -> {out} (sample with `undiffuse sample --run {out}`; the sampler and "
          "spacing are chosen there: --sampler, --spacing)")
    return 0
