"""The sampling flags that `undiffuse sample` and `undiffuse eval` share, and the one ``SampleSpec``
they build from them."""
from __future__ import annotations

import argparse

from .checks import check_sample_settings
from .cli_flags import DeprecatedAlias
from .compiling import bf16_by_default
from .sampling import SampleSpec


def add_steps_and_spacing(p, default_steps: int | None, steps_help: str) -> None:
    """``--num-inference-steps`` and ``--spacing`` of `sample` and `eval`, with their old spellings
    ``--steps`` and ``--schedule`` kept (hidden, with a warning) for one release."""
    p.add_argument("--num-inference-steps", dest="num_inference_steps", type=int, default=default_steps,
                   help=steps_help)
    p.add_argument("--steps", dest="num_inference_steps", type=int, action=DeprecatedAlias,
                   new="--num-inference-steps", help=argparse.SUPPRESS)
    p.add_argument("--spacing", dest="spacing", default=None,
                   help="step schedule: trailing, linspace, leading, karras, logsnr "
                        "(default: the sampler's own, see `undiffuse samplers`)")
    p.add_argument("--schedule", dest="spacing", action=DeprecatedAlias, new="--spacing", help=argparse.SUPPRESS)


def add_precision(p) -> None:
    """``--bf16 / --no-bf16`` of `sample` and `eval`: bf16 by default where the hardware computes it
    natively, on Gaussian pixel runs (``bf16_by_default``; measured not to change FID-style at n = 2,000, docs/speed.md)."""
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="sample with bf16 weights under bf16 autocast (default: on for Gaussian pixel runs where the "
                        "hardware computes bf16 natively: CPUs with AVX-512 BF16 or AMX, GPUs with bf16; "
                        "--no-bf16 for float32)")


def sample_spec(args, options: dict | None = None) -> SampleSpec:
    """The ``SampleSpec`` of `undiffuse sample` / `eval` flags, every setting checked naming its flag."""
    options = (options or {}) | ({} if getattr(args, "eta", None) is None else {"eta": args.eta})
    check_sample_settings(getattr(args, "n", 1), num_inference_steps=args.num_inference_steps, guidance=args.guidance,
                          classifier_scale=getattr(args, "classifier_scale", 0.0), options=options, prefix="--")
    return SampleSpec(sampler=args.sampler, num_inference_steps=args.num_inference_steps, spacing=args.spacing,
                      seed=args.seed, guidance=args.guidance, classifier_scale=getattr(args, "classifier_scale", 0.0),
                      negative_prompt=getattr(args, "negative_prompt", None), bf16=_bf16(args), options=options)


def _bf16(args) -> bool:
    """``--bf16`` as given, else ``bf16_by_default`` for the run and the sampling device."""
    if args.bf16 is not None:
        return args.bf16
    from .distributed import resolve_device
    from .run_files import read_run_config

    return bf16_by_default(read_run_config(args.run), resolve_device(getattr(args, "device", "cpu")))
