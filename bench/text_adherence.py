"""Prompt adherence and the FID-style score of a trained text-to-image run against the guidance scale.

    undiffuse train --preset shapes --out runs/shapes          # or: --data mnist --text
    python bench/text_adherence.py --run runs/shapes            # JSON, Markdown table and plot

For shapes the prompts come in two sets: "seen" (every colour x shape pair occurs in training) and
"heldout" (one object's pair never does); for MNIST "strokes" (digit, thickness and slant stated) and
"digit" (only the digit). Each prompt is sampled --per-prompt times at every scale; a prompt counts
only when every attribute it states is read back right (undiffuse.metrics.adherence). The judge's
accuracy on real held-out images and the real-image ceiling / floor are recorded beside the scores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from undiffuse import load
from undiffuse.text.evaluate import evaluate_text_model, format_text_table

SCALES = [0.0, 1.0, 2.0, 3.0, 5.0, 7.5]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/shapes")
    p.add_argument("--dataset", default=None, help="shapes or mnist (default: the run's training data)")
    p.add_argument("--scales", type=float, nargs="+", default=SCALES)
    p.add_argument("--prompts", type=int, default=64, help="prompts per set")
    p.add_argument("--per-prompt", type=int, default=4, help="samples per prompt")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="sample under bf16 autocast")
    p.add_argument("--out", default=None, help="JSON path (default: docs/text_adherence_<dataset>.json)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pipe = load(args.run)
    result = evaluate_text_model(pipe, None, args.scales, args.per_prompt, dataset=args.dataset,
                                 n_prompts=args.prompts, sampler=args.sampler, num_inference_steps=args.steps, seed=args.seed,
                                 bf16=args.bf16, keep_samples=True)
    samples = result.pop("samples")
    out = Path(args.out or f"docs/text_adherence_{result['dataset']}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "run": args.run}, indent=2) + "\n")
    print(format_text_table(result))
    print(f"wrote {out}, {plot(result, out.with_suffix('.png'))} and {grids(samples, result, out)}")


def plot(result: dict, path: Path) -> Path:
    """Adherence per prompt set (left) and the FID-style score (right) against the guidance scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [float(w) for w in result["scales"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    for split in result["prompts"]:
        ax1.plot(scales, [e[split]["adherence"] for e in result["scales"].values()], "o-", label=split)
    ax1.axhline(result["real"]["adherence"], color="grey", ls="--", label="real images")
    ax1.set(xlabel="guidance w", ylabel="prompts fully correct", ylim=(0, 1.02), title="adherence")
    ax1.legend()
    ax2.plot(scales, [e.get("fid", float("nan")) for e in result["scales"].values()], "o-")
    if "fid_floor" in result:
        ax2.axhline(result["fid_floor"], color="grey", ls="--", label="real-data floor")
        ax2.legend()
    ax2.set(xlabel="guidance w", ylabel="FID-style (judge features)", title="sample quality")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def grids(samples: dict, result: dict, out: Path) -> Path:
    """The first 64 samples of each scale (prompt-major: each prompt's repeats side by side)."""
    from undiffuse.viz import save_grid

    folder = out.with_suffix("")
    for w, x in samples.items():
        save_grid(x[:64], folder / f"w{w}.png", nrow=result["n_per_prompt"] * 2)
    return folder


if __name__ == "__main__":
    main()
