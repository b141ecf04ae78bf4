"""Does sampling in bf16 change what a trained model draws? FID-style (n = 2,000 by default) of the
same run, sampler and seeds in float32 and in bf16, beside the seed-to-seed spread of float32 itself
(the metric's noise at this n), and the images/s of each, side by side in one run.

    python bench/bf16_sampling.py --run runs/mnist                         # the demo's settings
    python bench/bf16_sampling.py --run runs/cold-long/ddpm --guidance 1   # an unconditional run

Each row samples ``--n`` images as ``undiffuse eval`` does (batches of 100, batch i seeded
``seed + i``, balanced classes for a conditional run) and scores them with the same feature-space
metrics against the same real set. bf16 is the pipeline's bf16 path (a bf16 copy of the weights
under autocast, ``compiling.FastCopies``). The verdict column compares |bf16 - fp32| at a seed with
the spread |fp32(seed a) - fp32(seed b)|: inside it, the two precisions cannot be told apart at
this n.
"""
from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from undiffuse import load
from undiffuse.evaluate import _sample, sample_quality
from undiffuse.run_files import read_run_config
from undiffuse.sampling import SampleSpec


def measure(run: Path, n: int, seeds: list[int], spec: SampleSpec) -> list[dict]:
    pipe = load(run)
    dataset = read_run_config(run)["train"]["data"]
    rows = []
    for seed in seeds:
        for bf16 in (False, True):
            samples, requested, rate = _sample(pipe, n, spec.replace(seed=seed, bf16=bf16))
            q = sample_quality(samples, requested, dataset, n)
            rows.append({"precision": "bf16" if bf16 else "fp32", "seed": seed, "fid": q["fid"],
                         "fid_floor": q["fid_floor"], "class_accuracy": q.get("class_accuracy"),
                         "recall": q["recall"], "images_per_s": rate})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    fp32 = {r["seed"]: r for r in rows if r["precision"] == "fp32"}
    spread = max(fp32[a]["fid"] for a in fp32) - min(fp32[a]["fid"] for a in fp32)
    lines = ["| precision | seed | FID-style (floor) | class accuracy | recall | images/s | |bf16 - fp32| vs fp32 seed spread |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["class_accuracy"] is None else f"{r['class_accuracy']:.3f}"
        gap = "" if r["precision"] == "fp32" else \
            f"{abs(r['fid'] - fp32[r['seed']]['fid']):.2f} vs {spread:.2f}"
        lines.append(f"| {r['precision']} | {r['seed']} | {r['fid']:.2f} ({r['fid_floor']:.2f}) | {acc} | "
                     f"{r['recall']:.3f} | {r['images_per_s']:.1f} | {gap} |")
    speed = [r["images_per_s"] for r in rows if r["precision"] == "bf16"]
    base = [r["images_per_s"] for r in rows if r["precision"] == "fp32"]
    lines.append(f"\nbf16 / fp32 images/s: {sum(speed) / sum(base):.2f}x "
                 f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seeds", default="0,1", help="comma-separated; two or more give the fp32 spread")
    ap.add_argument("--sampler", default="ddim")
    ap.add_argument("--num-inference-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0, help="the demo's grids use 2")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        ap.error("--seeds needs two or more seeds: the fp32 spread between them is the yardstick")
    spec = SampleSpec(sampler=args.sampler, num_inference_steps=args.num_inference_steps, guidance=args.guidance)
    rows = measure(args.run, args.n, seeds, spec)
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), "spec": spec.to_dict(), "rows": rows}, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
