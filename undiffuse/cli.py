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
from .cli_flags import DeprecatedAlias, add_train_parser, config_from_args
from .text.cli import add_sample_text_options, cmd_sample_text
from .metrics.inception import UnavailableError
from .cli_sampling import add_steps_and_spacing, sample_spec
from .pictures import save_sampling_trajectory


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
    p.add_argument("--bf16", action="store_true", help="sample under bf16 autocast")
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
        return _list_cold()

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


def _list_cold() -> int:
    from .cold.degradations import DEGRADATIONS
    from .cold.samplers import COLD_SAMPLERS

    about = {"naive": "Algorithm 1: x_{s-1} = D(R(x_s, s), s - 1)",
             "improved": "Algorithm 2: x_{s-1} = x_s - D(x0_hat, s) + D(x0_hat, s - 1) (the default)",
             "direct": "one-shot restoration R(x_t, t)"}
    print("Cold Diffusion (Bansal et al. 2022): train with --process NAME[:KEY=VALUE...]; samplers:")
    for name in COLD_SAMPLERS:
        print(f"  {name:10s} {about.get(name, '')}")
    print("degradations (settings):")
    for name, cls in DEGRADATIONS.items():
        print(f"  {name:10s} {', '.join(f'{k}={v}' for k, v in cls().settings().items())}")
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
    from .text.objective import preview_prompts

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
    out, pipe = Path(cfg.out), trainer.pipeline()
    pictures = [out / "samples" / "final.png", *_loss_curve(trainer)]
    if pipe.can_restore and pipe.can_generate:
        pictures.append(out / "samples" / "final-restore.png")
    if trainer.data.x.ndim == 4 and pipe.can_generate:
        rows = {} if trainer.text is None else {"prompts": preview_prompts(trainer.data, 4, cfg.seed)}
        pictures.append(save_sampling_trajectory(pipe, out / "samples" / "trajectory.png", sampler=trainer.cfg.sampler,
                                             num_inference_steps=cfg.sample_steps, seed=cfg.seed,
                                             guidance=cfg.guidance, **rows))
    print(f"trained {trainer.step} steps in {time.perf_counter() - t0:.0f} s; run directory: {out}")
    if trainer.step < cfg.max_train_steps:
        print(f"stopped at step {trainer.step} of {cfg.max_train_steps} (--max-minutes {cfg.max_minutes}), checkpoint "
              "saved; to continue, run train again with the same settings and --resume")
    for path in pictures:
        print(f"  picture: {path}")
    return 0


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
    print(f"{args.n} samples in {dt:.1f} s ({args.n / dt:.1f} images/s) -> {path}")
    if args.trajectory:
        path = save_sampling_trajectory(pipe, Path(args.trajectory), spec=spec.replace(
            class_labels=args.class_label, classifier_scale=0.0))
        print(f"trajectory -> {path}")
    return 0


def _add_degrade(sub) -> None:
    p = sub.add_parser("degrade", help="draw a cold degradation's ladder D(x0, t), t = 0..T",
                       description="Draw the ladder of a cold degradation (Bansal et al. 2022): one row "
                                   "per image, one column per severity t, evenly spaced from 0 to T.")
    p.add_argument("source", metavar="IMAGE_OR_DATASET",
                   help="an image file, or a dataset: mnist, digits, photos (tiles of scikit-learn's "
                        "sample photographs, colour), or an image folder")
    p.add_argument("--process", required=True,
                   help="blur, mask, pixelate, desaturate, snow, fade or gaussian, with settings as in "
                        "blur:T=20:sigma=7 (`undiffuse samplers --cold` lists them)")
    p.add_argument("--max-severity", dest="max_severity", type=int, default=None,
                   help="T, the last severity, overriding the spec's (default: its own)")
    p.add_argument("--steps", dest="max_severity", type=int, action=DeprecatedAlias, new="--max-severity",
                   help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=8, help="images (rows) drawn from a dataset")
    p.add_argument("--columns", type=int, default=11, help="severities shown, 0 and T included")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the random state (mask, snow, ...)")
    p.add_argument("--image-size", type=int, default=None,
                   help="resize to this size (an image file: centre square, default at most 128 px)")
    p.add_argument("--out", default="ladder.png", help="where to write the PNG")


def _ladder_images(source: str, n: int, seed: int, image_size: int | None):
    """(B, C, H, W) images in [-1, 1]: one image file, or ``n`` images of a dataset."""
    import torch

    from .data import IMAGE_EXTENSIONS, load_dataset
    from .data.base import check_image_size, resize_images

    check_image_size(image_size)
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    path = Path(source).expanduser()
    if path.suffix.lower() in IMAGE_EXTENSIONS and not path.exists():
        raise FileNotFoundError(f"image {path} does not exist")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        import numpy as np
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("L" if img.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        pixels = np.asarray(img.crop((left, top, left + side, top + side)), dtype=np.float32)
        x = torch.from_numpy(pixels) / 127.5 - 1.0
        x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1))[None]
        return resize_images(x, image_size or min(side, 128)) if (image_size or side > 128) else x
    if source.strip().lower() == "photos":
        from .cold.degradations.fade import load_source

        x = load_source("photos")
        x = resize_images(x, image_size) if image_size else x
    else:
        data = load_dataset(source, image_size=image_size)
        if data.x.ndim != 4:
            raise ValueError(f"{source} holds {data.x.shape[1]}-D points, not images; degrade draws images")
        x = data.x
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def cmd_degrade(args) -> int:
    import torch

    from .cold.degradations import degradation_from_config, make_degradation
    from .viz import save_labelled_grid

    check_output_file(args.out, "--out")
    deg = make_degradation(args.process)
    if args.max_severity is not None:
        deg = degradation_from_config({**deg.config(), "num_steps": args.max_severity})
    if args.columns < 2:
        raise ValueError(f"--columns must be at least 2 (t = 0 and T), got {args.columns}")
    x = _ladder_images(args.source, args.n, args.seed, args.image_size)
    with torch.no_grad():
        ts, frames = deg.ladder(x, args.columns, generator=torch.Generator().manual_seed(args.seed))
    path = save_labelled_grid([frames[:, i] for i in range(len(x))], args.out, col_labels=[str(t) for t in ts])
    print(f"{deg.name} (T = {deg.num_steps}): {len(x)} images x {len(ts)} severities -> {path}")
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
    _add_degrade(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "samplers": cmd_samplers,
                "train-classifier": cmd_train_classifier, "degrade": cmd_degrade}
    try:
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, UnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
