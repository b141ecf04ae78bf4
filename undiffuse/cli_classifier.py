"""``undiffuse train-classifier``: train a run's noisy classifier for classifier guidance."""
from __future__ import annotations

import argparse

from .classifier.training import train_run_classifier
from .cli_flags import DeprecatedAlias

__all__ = ["add_cli", "cmd_train_classifier", "format_accuracy"]


def format_accuracy(info: dict) -> str:
    """The held-out accuracy table: one line per noise level."""
    lines = ["     t  sigma/alpha  held-out accuracy"]
    for t, acc in info["accuracy_by_t"].items():
        lines.append(f"{float(t):6.2f}  {info['sigma_over_alpha_by_t'][t]:11.3f}  {acc:17.3f}")
    return "\n".join(lines)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train-classifier`` to an ``argparse`` sub-parser set (``cli.main``'s)."""
    p = subparsers.add_parser(
        "train-classifier", help="train a noisy classifier for classifier guidance",
        description="Train a noise-conditional classifier p(y | x_t, t) on the data and forward process of a "
                    "run (Dhariwal & Nichol 2021) and save it in RUN/classifier/, where classifier guidance "
                    "finds it. Prints held-out accuracy by noise level.")
    p.add_argument("--run", required=True, help="run directory written by `undiffuse train` (labelled images)")
    p.add_argument("--max-train-steps", type=int, default=2000,
                   help="number of optimisation steps (MNIST 32x32: about 0.12 s each on one CPU thread)")
    p.add_argument("--steps", dest="max_train_steps", type=int, default=argparse.SUPPRESS,
                   action=DeprecatedAlias, new="--max-train-steps",
                   help="deprecated spelling of --max-train-steps, removed in the next release")
    p.add_argument("--batch-size", type=int, default=64, help="images per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, warm-up then cosine)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, batches, levels and noise")


def cmd_train_classifier(args: argparse.Namespace) -> int:
    """Train, save and print the held-out accuracy table; 0 on success."""
    path, info = train_run_classifier(args.run, steps=args.max_train_steps, batch_size=args.batch_size, lr=args.lr,
                                      seed=args.seed)
    print(format_accuracy(info))
    print(f"trained {info['steps']} steps in {info['seconds']:.0f} s; classifier: {path}")
    return 0
