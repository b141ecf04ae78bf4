"""`undiffuse` command line: train, sample, eval, samplers, degrade.

Run ``undiffuse COMMAND --help`` for each command's options.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .checks import MAX_GUIDANCE, check_output_file
from .cli_classifier import add_cli as add_classifier_cli
from .cli_classifier import cmd_train_classifier
from .cli_eval import add_eval, cmd_eval
from .cli_flags import add_train_parser, config_from_args
from .text.cli import add_sample_text_options, cmd_sample_text
from .metrics.inception import UnavailableError
from .cli_sampling import add_precision, add_steps_and_spacing, sample_spec
from .cold.cli import add_degrade, cmd_degrade, list_cold
from .interop.cli import add_cli as add_interop_cli, cmd_export, cmd_import
from .latent.cli import add_train_autoencoder, cmd_train_autoencoder
from .pictures import save_sampling_trajectory
from .serve.cli import add_serve, cmd_serve


def _add_sample(sub) -> None:
    from .samplers import SAMPLERS

    p = sub.add_parser("sample", help="draw samples from a trained run",
                       description="Draw samples from a run directory's EMA weights. "
                                   "`undiffuse samplers` lists the samplers.")
    p.add_argument("--run", required=True, help="run directory written by `undiffuse train`")
    p.add_argument("--sampler", default=None, metavar="NAME",
                   help="sampler (default ddim): " + ", ".join(sorted(SAMPLERS))
                        + "; for a cold run (default improved): naive, improved, direct")
    add_steps_and_spacing(p, default_steps=None, steps_help="number of sampler steps (default 50; a cold run: "
                                                               "every severity)")
    p.add_argument("--eta", type=float, default=None,
                   help="stochasticity of ddim, euler_ancestral and the *_sde samplers")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sampler option, e.g. s_churn=40 (heun), snr=0.16 (pc), "
                        "variance=beta (ddpm); repeatable")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0, help="seed: fixes every sample")
    p.add_argument("--class", dest="class_label", type=int, default=None,
                   help="class to generate (conditional models); default: one column per class")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale w (1: plain conditional; > 1: stronger; 0: unconditional; "
                        f"|w| <= {MAX_GUIDANCE:g})")
    p.add_argument("--classifier-scale", type=float, default=0.0,
                   help="classifier guidance scale with the run's noisy classifier (`undiffuse train-classifier`)")
    add_precision(p)
    p.add_argument("--out", default="samples.png", help="where to write the grid (PNG)")
    p.add_argument("--trajectory", default=None, help="also write x_t and predicted x0 along the way")
    add_sample_text_options(p)


def _add_samplers(sub) -> None:
    p = sub.add_parser("samplers", help="list the samplers: order, stochastic or not, cost, paper",
                       description="Every sampler `undiffuse sample --sampler NAME` accepts.")
    p.add_argument("--cold", action="store_true",
                   help="list the Cold Diffusion samplers and degradations instead")


def cmd_samplers(args) -> int:
    import inspect

    from .samplers import SAMPLERS

    if getattr(args, "cold", False):
        return list_cold()

    print(f"{'name':16s} {'order':>5s}  {'noise':5s}  {'NFE for N steps':15s}  {'schedule':8s}  paper; options")
    for name, info in SAMPLERS.items():
        cost = "adaptive" if info.nfe is None else _nfe_formula(info)
        options = [k for k, v in inspect.signature(info.fn).parameters.items()
                   if v.kind is inspect.Parameter.KEYWORD_ONLY and k not in ("cond", "generator", "callback")]
        fixed = ", ".join(f"{k}={v}" for k, v in info.options.items())
        print(f"{name:16s} {info.order or '-':>5}  {'yes' if info.stochastic else 'no':5s}  {cost:15s}  "
              f"{info.spacing:8s}  {info.paper}; options: {', '.join(options) or '-'}"
              + (f" (registered with {fixed})" if fixed else ""))
    return 0


def _nfe_formula(info) -> str:
    a, b = info.nfe(1, info.options), info.nfe(2, info.options)
    slope, offset = b - a, a - (b - a)
    return f"{slope} N" + (f" + {offset}" if offset > 0 else f" - {-offset}" if offset < 0 else "")


def _parse_options(pairs: list[str]) -> dict:
    opts = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--option needs KEY=VALUE, got {pair!r}")
        try:
            opts[key] = int(value)
        except ValueError:
            try:
                opts[key] = float(value)
            except ValueError:
                opts[key] = value
    return opts


def cmd_train(args) -> int:
    cfg = config_from_args(args)
    from . import distributed
    from .rundir import check_run_dir
    from .trainer import NonFiniteLossError, Trainer

    check_run_dir(cfg.out, resume=args.resume, overwrite=args.overwrite)  # before the data loads
    t0 = time.perf_counter()
    # Under torchrun this is one of several DDP processes; rank 0 alone prints and draws.
    with distributed.process_group(cfg.device):
        main_rank = distributed.is_main()
        if cfg.text and main_rank:
            print(f"embedding the captions with {cfg.text_encoder} (once: cached for later runs)", flush=True)
        trainer = Trainer(cfg, overwrite=args.overwrite)
        if args.resume and trainer.resume() and main_rank:
            print(f"resumed {cfg.out} at step {trainer.step}")
        try:
            trainer.fit()
        except NonFiniteLossError as e:
            if main_rank:
                print(f"error: {e}", file=sys.stderr)
            return 2
    if not main_rank:
        return 0
    pictures = final_pictures(trainer)
    print(f"trained {trainer.step} steps in {time.perf_counter() - t0:.0f} s; run directory: {cfg.out}")
    if trainer.step < cfg.max_train_steps:
        print(f"stopped at step {trainer.step} of {cfg.max_train_steps} (--max-minutes {cfg.max_minutes}), checkpoint "
              "saved; to continue, run train again with the same settings and --resume")
    for path in pictures:
        print(f"  picture: {path}")
    return 0


def final_pictures(trainer) -> list[Path]:
    """What ``train`` shows when it ends: the final grid (written by ``fit``), the loss curve, a cold
    run's restorations and the denoising trajectory; returns their paths."""
    from .objectives import picture_bf16
    from .text.objective import preview_prompts

    cfg = trainer.cfg
    out, pipe = Path(cfg.out), trainer.pipeline()
    pictures = [out / "samples" / "final.png", *_loss_curve(trainer)]
    if pipe.can_restore and pipe.can_generate:
        pictures.append(out / "samples" / "final-restore.png")
    if trainer.data.x.ndim == 4 and pipe.can_generate:
        rows = {} if trainer.text is None else {"prompts": preview_prompts(trainer.data, 4, cfg.seed)}
        pictures.append(save_sampling_trajectory(pipe, out / "samples" / "trajectory.png", sampler=cfg.sampler,
                                                 num_inference_steps=cfg.sample_steps, seed=cfg.seed,
                                                 guidance=cfg.guidance, bf16=picture_bf16(trainer), **rows))
    return pictures


def _loss_curve(trainer) -> list[Path]:
    """The loss curve, or none (with a note) for a run stopped before its first log line."""
    from .viz import plot_loss_curve

    log = trainer.run_dir / "log.jsonl"
    if not log.exists():
        print(f"no loss curve: training stopped at step {trainer.step}, before its first log line "
              f"(every {trainer.cfg.log_every} steps)")
        return []
    return [plot_loss_curve(log, trainer.run_dir / "samples" / "loss.png")]


def cmd_sample(args) -> int:
    import torch

    from .api import load
    from .viz import plot_points, save_grid

    # Every setting checked before any work: loading, sampling, then writing.
    spec = sample_spec(args, _parse_options(args.option))
    for flag, path in (("--out", args.out), ("--trajectory", args.trajectory)):
        if path is not None:
            check_output_file(path, flag)
    pipe = load(args.run)
    points = len(pipe.shape) == 1  # a 2-D toy run: draw a scatter, not an image grid
    if points and args.trajectory:
        raise ValueError(f"--trajectory draws images, but {args.run} is a run on "
                         f"{pipe.shape[0]}-D points; drop --trajectory")
    if pipe.takes_prompts or args.prompt or args.negative_prompt:
        return cmd_sample_text(args, pipe, spec)
    if args.class_label is not None:
        spec = spec.replace(class_labels=args.class_label)
    elif pipe.takes_labels:
        spec = spec.replace(class_labels=torch.arange(args.n) % pipe.num_classes)
    t0 = time.perf_counter()
    x = pipe.sample(args.n, spec)
    dt = time.perf_counter() - t0
    nrow = pipe.num_classes if (pipe.takes_labels and args.class_label is None) else None
    path = plot_points(x, args.out) if points else save_grid(x, args.out, nrow=nrow)
    print(f"{args.n} samples in {dt:.1f} s ({args.n / dt:.1f} images/s, {'bf16' if spec.bf16 else 'float32'}) -> {path}")
    if args.trajectory:
        path = save_sampling_trajectory(pipe, Path(args.trajectory), spec=spec.replace(
            class_labels=args.class_label, classifier_scale=0.0))
        print(f"trajectory -> {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `undiffuse` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="undiffuse", description="A lab for diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    _add_sample(sub)
    add_eval(sub)
    _add_samplers(sub)
    add_classifier_cli(sub)
    add_degrade(sub)
    add_train_autoencoder(sub)
    add_interop_cli(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "samplers": cmd_samplers,
                "train-classifier": cmd_train_classifier, "degrade": cmd_degrade,
                "train-autoencoder": cmd_train_autoencoder, "export": cmd_export, "import": cmd_import,
                "serve": cmd_serve}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, UnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
