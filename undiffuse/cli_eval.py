"""`undiffuse eval`: the command line of ``undiffuse.evaluate`` (and, for text runs, of
``undiffuse.text.evaluate`` through ``cli_text.cmd_eval_text``), alone or under torchrun."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from .checks import check_count, check_guidance, check_sample_settings
from .cli_sampling import add_precision, add_steps_and_spacing, sample_spec
from .text.cli import add_eval_text_options
from .distributed import DEVICES
from .cold import is_cold


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="measure a trained run (FID-style, KID, PRDC, bits/dim, plots; prompt adherence for text runs)",
                       description="Measure a run's samples against real data in a feature network's "
                                   "space, beside the real-data floor; write eval.json and plots.")
    # --run-dir and --num-samples also: under torchrun, whose own parser takes a bare --run for its
    # --run-path and --n for --nnodes / --nproc-per-node (argparse prefix matching) and stops.
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="run directory written by `undiffuse train`")
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=2000, help="number of generated samples")
    p.add_argument("--sampler", default="ddim", help="sampler (`undiffuse samplers` lists them)")
    add_steps_and_spacing(p, default_steps=50, steps_help="sampler steps")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nll-images", type=int, default=100, help="real images for bits/dim (0: skip)")
    p.add_argument("--nll-steps", type=int, default=100,
                   help="DDPM steps evaluated for the bound (log-spaced groups, unbiased estimate)")
    add_precision(p)
    p.add_argument("--batch-size", type=int, default=100, help="images per sampling batch")
    p.add_argument("--device", default="auto", choices=DEVICES,
                   help="where to sample (auto: CUDA when present); torchrun shares the batches out")
    p.add_argument("--standard-fid", action="store_true",
                   help="also the standard Inception FID via torchmetrics (needs its cached weights)")
    p.add_argument("--inception-weights", default=None,
                   help="path to the FID Inception weights for --standard-fid")
    add_eval_text_options(p)


def check_eval_args(args) -> None:
    """Every numeric setting of `undiffuse eval`, before the run loads or a process group starts."""
    check_sample_settings(args.n, num_inference_steps=args.num_inference_steps, guidance=args.guidance, prefix="--")
    for scale in args.guidance_scales or []:
        check_guidance(scale, "--guidance-scales")
    for flag, value, minimum in (("--batch-size", args.batch_size, 1), ("--nll-images", args.nll_images, 0),
                                 ("--nll-steps", args.nll_steps, 1), ("--per-prompt", args.per_prompt, 1)):
        check_count(value, flag, minimum)


def cmd_eval(args) -> int:
    from . import distributed
    from .text.cli import cmd_eval_text
    from .evaluate import evaluate, format_table
    from .run_files import read_run_config

    check_eval_args(args)
    cfg = read_run_config(args.run)
    if is_cold(cfg["process"]):
        args.device = "cpu"  # the cold samplers draw on the CPU
    # Under torchrun the processes share the sampling; rank 0 alone measures, writes and prints
    # while the others wait (hence a long timeout: the bound and plots can take a while).
    with distributed.process_group(args.device, timeout=timedelta(hours=3)):
        if cfg.get("text"):
            return cmd_eval_text(args)
        result = evaluate(args.run, n=args.n, spec=sample_spec(args),
                          nll_images=args.nll_images, nll_steps=args.nll_steps,
                          standard_fid=args.standard_fid, inception_weights=args.inception_weights,
                          batch=args.batch_size, device=args.device)
        if distributed.is_main():
            print(format_table(result))
            print(f"written: {Path(args.run) / 'eval.json'}")
            for name, path in result.get("plots", {}).items():
                print(f"  {name}: {path}")
    return 0
