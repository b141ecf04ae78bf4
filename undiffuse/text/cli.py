"""The text-to-image parts of the command line: ``undiffuse sample --prompt ...`` on a ``--text`` run.

Kept apart from ``undiffuse.cli`` so that each file stays short; ``cli`` registers these options and
hands a text run's sampling over to ``cmd_sample_text``.
"""
from __future__ import annotations

import time
from pathlib import Path


def add_sample_text_options(p) -> None:
    """``--prompt`` (repeatable) and ``--negative-prompt`` for ``undiffuse sample``."""
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="The prompt to generate images for (text-to-image runs). Repeat it for a grid with "
                        "one row per prompt and --n columns, column j drawn with the same seed in every row. "
                        "Without it a text model samples unconditionally (the empty caption).")
    p.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="The prompt to guide away from: it takes the place of the empty caption in "
                        "classifier-free guidance, so it needs --guidance other than 1 (e.g. 3).")


def add_eval_text_options(p) -> None:
    """``--guidance-scales`` and ``--per-prompt`` for ``undiffuse eval`` on a text run."""
    p.add_argument("--guidance-scales", type=float, nargs="+", default=None,
                   help="text runs: guidance scales to measure prompt adherence at (default: --guidance)")
    p.add_argument("--per-prompt", type=int, default=4, help="text runs: samples per evaluation prompt")


def cmd_sample_text(args, pipe, spec) -> int:
    """``undiffuse sample`` on a text-to-image run (or with --prompt, refused for other runs), the
    samples drawn as ``spec`` (the command's ``SampleSpec``) says."""
    from .objective import prompt_grid
    from ..pictures import save_sampling_trajectory
    from ..viz import save_grid

    if not pipe.takes_prompts:
        raise ValueError(f"{args.run} is not a text-to-image run, so --prompt and --negative-prompt do not apply; "
                         "train one with `undiffuse train --text` (e.g. --data shapes)")
    if args.class_label is not None:
        raise ValueError("--class is for class-conditional runs; a text-to-image run takes --prompt")
    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    prompts = args.prompt or []
    if args.guidance != 1.0 and not prompts:
        raise ValueError("classifier-free guidance (--guidance) needs a prompt: add --prompt TEXT")
    t0 = time.perf_counter()
    if len(prompts) > 1:
        path = prompt_grid(pipe, prompts, args.n, args.out, spec)
    else:
        x = pipe.sample(args.n, spec, prompts=prompts[0] if prompts else None)
        path = save_grid(x, args.out)
    dt, total = time.perf_counter() - t0, args.n * max(1, len(prompts))
    print(f"{total} samples in {dt:.1f} s ({total / dt:.1f} images/s) -> {path}")
    if args.trajectory:
        path = save_sampling_trajectory(pipe, Path(args.trajectory), spec=spec.replace(prompts=prompts or None,
                                                                             classifier_scale=0.0))
        print(f"trajectory -> {path}")
    return 0


def cmd_eval_text(args) -> int:
    """`undiffuse eval` on a text run: prompt adherence and the FID-style score at the guidance
    scale (``--guidance``, or several with ``--guidance-scales``), written to RUN/eval_text.json.
    Runs inside ``cmd_eval``'s process group: rank 0 alone writes and prints."""
    from .. import distributed
    from ..cli_sampling import sample_spec
    from .evaluate import evaluate_text_model, format_text_table
    from ..api import load
    from ..checkpoint import write_json

    scales = args.guidance_scales or [args.guidance]
    pipe = load(args.run)
    pipe.denoiser.to(distributed.resolve_device(args.device))
    result = evaluate_text_model(pipe, None, scales, args.per_prompt, spec=sample_spec(args), batch=args.batch_size)
    if distributed.is_main():
        out = Path(args.run) / "eval_text.json"
        write_json(out, result)
        print(format_text_table(result))
        print(f"written: {out}")
    return 0
