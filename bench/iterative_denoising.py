"""Iterative denoising vs one shot: the blurry posterior mean, and the sharp images k passes give.

    python bench/iterative_denoising.py train --steps 1500     # runs/iterative/gaussian (L1, predicts x0)
    python bench/iterative_denoising.py measure --n 1000       # -> docs/iterative_denoising.{json,png}
    python bench/iterative_denoising.py table

The denoiser is a cold-interface ``gaussian`` run (T = 200, cosine alpha_bar; the MNIST demo's net,
unconditional) trained with the L1 loss to predict x0 (``undiffuse train --process gaussian``), on
the 4000-digit training split of ``bench/cold_restoration.py``. From the same pure-noise x_T it
restores with ``undiffuse.cold.iterative.iterative_denoise`` for k = 1, 2, 5, 10, 20, 50 network
calls (k = 1: the one-shot ``R(x_T, T)``) and scores each k: FID-style against held-out digits (the
MNIST feature net; floor: training digits against the same) and sharpness, the mean absolute
finite-difference gradient of the images beside the data's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cold_restoration import splits

ROOT, DOCS = Path("runs/iterative/gaussian"), Path("docs")
KS = (1, 2, 5, 10, 20, 50)


def sharpness(x: torch.Tensor) -> float:
    """Mean |dx| + |dy| per pixel (images in [-1, 1]): what blur takes away first."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return float(dx + dy)


def train(steps: int) -> None:
    from undiffuse.config import preset
    from undiffuse.trainer import Trainer

    cfg = preset("mnist").updated(process="gaussian", data="mnist", class_conditional=False, out=str(ROOT),
                                  max_train_steps=steps, sample_every=0, checkpoint_every=250, num_samples=16)
    trainer = Trainer(cfg, data=splits("mnist")[0])
    trainer.resume()
    trainer.fit()


def measure(n: int, seed: int = 0) -> list[dict]:
    from undiffuse import load
    from undiffuse.metrics import extract_features, fid_from_features, get_feature_net
    from undiffuse.cold.iterative import iterative_denoise
    from undiffuse.viz import save_labelled_grid

    train_x, held = splits("mnist")
    net, _ = get_feature_net("mnist")
    ref = extract_features(net, held.x[:n])
    floor = fid_from_features(extract_features(net, train_x.x[:n]), ref)
    pipe = load(ROOT)
    deg = pipe.degradation
    x_T, _ = deg.prior((n, *held.x.shape[1:]), torch.Generator().manual_seed(seed))
    rows, pictures = [], []
    data_sharpness = sharpness(held.x[:n])
    for k in KS:
        x = iterative_denoise(pipe.restorer, deg, x_T, k, generator=torch.Generator().manual_seed(seed + 1))
        x = x.clamp(-1, 1)
        row = {"k": k, "n": n, "fid": fid_from_features(extract_features(net, x), ref), "fid_floor": floor,
               "sharpness": sharpness(x), "data_sharpness": data_sharpness}
        rows.append(row)
        pictures.append(x[:12])
        print(json.dumps(row), flush=True)
    (DOCS / "iterative_denoising.json").write_text(json.dumps(rows, indent=1))
    save_labelled_grid(pictures, DOCS / "iterative_denoising.png", row_labels=[f"k = {k}" for k in KS])
    return rows


def table() -> str:
    path = DOCS / "iterative_denoising.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    lines = ["| network calls k | n | FID-style (floor) | sharpness (data) |", "|---|---|---|---|"]
    lines += [f"| {r['k']} | {r['n']} | {r['fid']:.1f} ({r['fid_floor']:.1f}) | "
              f"{r['sharpness']:.3f} ({r['data_sharpness']:.3f}) |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global ROOT, DOCS
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["train", "measure", "table"])
    p.add_argument("--steps", type=int, default=1500, help="training steps")
    p.add_argument("--n", type=int, default=1000, help="images per k")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default=str(ROOT))
    p.add_argument("--docs", default=str(DOCS))
    args = p.parse_args(argv)
    ROOT, DOCS = Path(args.root), Path(args.docs)
    torch.set_num_threads(args.threads)
    if args.phase == "train":
        train(args.steps)
    elif args.phase == "measure":
        measure(args.n)
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
