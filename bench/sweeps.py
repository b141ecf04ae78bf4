"""What the sweep benchmarks share: common flags, results kept in a JSON file that a rerun resumes,
and the run -> table -> plot sequence."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

import torch


def add_common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", default=out, help="results (JSON; the plot goes beside it as .png)")
    p.add_argument("--plot-only", action="store_true", help="redraw the table and plot from --out")


def sweep_main(p: argparse.ArgumentParser, run: Callable, table: Callable, plot: Callable) -> None:
    """Parse, run what --out does not hold yet (``run(args, results, out)``), print, plot."""
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else []
    if not args.plot_only:
        run(args, results, out)
    print(table(results))
    plot(results, out.with_suffix(".png"))


def record(results: list[dict], row: dict, out: Path) -> None:
    """Append a row and rewrite the file, so an interrupted sweep loses nothing."""
    results.append(row)
    out.write_text(json.dumps(results, indent=1))
