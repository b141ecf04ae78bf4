"""The fidelity-diversity trade-off of guidance on the trained MNIST model: FID-style score,
precision / recall and the accuracy of the requested digit against the guidance scale, for
classifier-free guidance (Ho & Salimans 2022) and classifier guidance (Dhariwal & Nichol 2021).

    undiffuse train-classifier --run runs/demo          # the noisy classifier (once, ~4 min)
    python bench/guidance_sweep.py --run runs/demo       # the sweep, table and plot

Classifier guidance steers the model's null class (the unconditional model that label dropout
trained) with the run's noise-conditional classifier, as in Dhariwal & Nichol's unconditional
ImageNet experiments. Class accuracy is judged by the measurement feature net, a different network
from the guiding classifier. Each point: the same n class-balanced samples (seed fixed, bf16).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from sweeps import add_common, record, sweep_main
from undiffuse import load
from undiffuse.evaluate import sample_quality

CFG_SCALES = [0.0, 1.0, 1.5, 2.0, 3.0, 5.0]
CLASSIFIER_SCALES = [0.5, 1.0, 2.0, 4.0, 8.0]
KEYS = ("fid", "fid_floor", "precision", "recall", "class_accuracy")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, nargs="*", default=CFG_SCALES)
    p.add_argument("--classifier", type=float, nargs="*", default=CLASSIFIER_SCALES)
    add_common(p, "docs/guidance_sweep.json")
    sweep_main(p, run, table, plot)


def run(args, results: list[dict], out: Path) -> None:
    pipe = load(args.run)
    labels = torch.arange(args.n) % pipe.num_classes
    done = {(r["kind"], r["scale"]) for r in results}
    jobs = [("classifier-free", w, dict(guidance=w)) for w in args.cfg] + \
           [("classifier", s, dict(guidance=0.0, classifier_scale=s)) for s in args.classifier]
    for kind, scale, kw in jobs:
        if (kind, scale) in done:
            continue
        t0 = time.perf_counter()
        x = torch.cat([pipe.sample(len(lab), sampler=args.sampler, num_inference_steps=args.steps, seed=args.seed + i,
                                   class_labels=lab, bf16=True, **kw)
                       for i, lab in ((i, labels[i:i + 250]) for i in range(0, args.n, 250))])
        q = sample_quality(x, labels, "mnist", args.n, seed=args.seed)
        row = {"kind": kind, "scale": scale, "n": args.n, "sampler": args.sampler, "steps": args.steps,
               **{k: q[k] for k in KEYS}, "seconds": time.perf_counter() - t0}
        record(results, row, out)
        print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
              flush=True)


def table(results: list[dict]) -> str:
    lines = ["| guidance | scale | FID-style | precision | recall | class accuracy |", "|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["kind"], r["scale"])):
        lines.append(f"| {r['kind']} | {r['scale']:g} | {r['fid']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['class_accuracy']:.3f} |")
    if results:
        r = results[0]
        lines.append(f"\nreal-data floor {r['fid_floor']:.2f}; n = {r['n']}, {r['sampler']} {r['steps']} steps")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not results:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for kind, marker in (("classifier-free", "o"), ("classifier", "s")):
        rows = sorted((r for r in results if r["kind"] == kind), key=lambda r: r["scale"])
        if not rows:
            continue
        axes[0].plot([r["class_accuracy"] for r in rows], [r["fid"] for r in rows], marker=marker, label=kind)
        axes[1].plot([r["recall"] for r in rows], [r["precision"] for r in rows], marker=marker, label=kind)
        for r in rows:
            axes[0].annotate(f"{r['scale']:g}", (r["class_accuracy"], r["fid"]), fontsize=7)
            axes[1].annotate(f"{r['scale']:g}", (r["recall"], r["precision"]), fontsize=7)
    axes[0].set(xlabel="accuracy of the requested digit", ylabel="FID-style score", yscale="log",
                title="fidelity to the class vs. distance to the data")
    axes[1].set(xlabel="recall (diversity)", ylabel="precision (fidelity)", title="precision-recall")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
