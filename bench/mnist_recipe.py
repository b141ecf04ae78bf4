"""Which MNIST recipe gives recognisable digits in a few CPU minutes? Train each candidate for the
same wall-clock budget, then measure its samples with the MNIST feature network:

* FID-style distance (feature-net Fréchet distance) to held-out real digits, beside the real-data floor;
* class accuracy: how often the feature classifier reads the digit that was asked for.

    python bench/mnist_recipe.py --train-steps 500 --candidates base,v-minsnr
    python bench/mnist_recipe.py --minutes 3 --candidates base,v,x0,minsnr

Results are recorded in docs/mnist_recipe.md.
"""
from __future__ import annotations

import argparse
import time

import torch

from undiffuse.config import preset
from undiffuse.data import load_dataset
from undiffuse.metrics import extract_features, fid_from_features, get_feature_net, predict_labels
from undiffuse.trainer import Trainer

UNET = dict(type="unet", channels=32, channel_mult=(1, 2, 4), num_res_blocks=1,
            attn_resolutions=(8,), dropout=0.0)
CANDIDATES = {
    "base": {},                                               # eps, cosine DDPM, lr 1e-3, batch 128
    "v": {"prediction": "v"},
    "x0": {"prediction": "x0"},
    "minsnr": {"weighting": "min_snr"},
    "v-minsnr": {"prediction": "v", "weighting": "min_snr"},
    "edm": {"prediction": "edm", "process": "edm"},
    "lr2e-3": {"lr": 2e-3},
    "bs64": {"batch_size": 64},
    "ch48": {"net": {**UNET, "channels": 48}},
    "small122": {"net": {**UNET, "channel_mult": (1, 2, 2)}},
    "attn16": {"net": {**UNET, "attn_resolutions": (16, 8)}},
    "linear": {"process": "ddpm:linear:1000"},
}


def evaluate(pipe, feat_net, real_feats, n: int, guidance: float, steps: int) -> dict:
    labels = torch.arange(n) % 10
    t0 = time.perf_counter()
    x = pipe.sample(n, sampler="ddim", num_inference_steps=steps, seed=1, class_labels=labels, guidance=guidance,
                    bf16=True)
    dt = time.perf_counter() - t0
    acc = (predict_labels(feat_net, x) == labels).float().mean().item()
    fid = fid_from_features(extract_features(feat_net, x), real_feats)
    return {"fid": fid, "class_acc": acc, "sample_s": dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=None, help="training budget per candidate")
    ap.add_argument("--train-steps", type=int, default=None, help="or: fixed steps per candidate")
    ap.add_argument("--candidates", default="base,v,x0,minsnr")
    ap.add_argument("--n", type=int, default=300, help="samples per evaluation")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--guidance", default="1,2", help="CFG scales to evaluate")
    ap.add_argument("--out", default="runs/recipe")
    args = ap.parse_args()

    feat_net, info = get_feature_net("mnist")
    data = load_dataset("mnist")
    train_half, held_out = data.split(0.5, seed=0)
    real_feats = extract_features(feat_net, held_out.x[: args.n])
    floor = fid_from_features(extract_features(feat_net, train_half.x[: args.n]), real_feats)
    print(f"feature net held-out accuracy {info['heldout_accuracy']:.4f}; "
          f"real-vs-real FID floor at n={args.n}: {floor:.2f}")
    print(f"{'candidate':10s} {'steps':>6s} {'img/s':>6s} {'loss':>7s}  " +
          "  ".join(f"FID(w={g}) acc(w={g})" for g in args.guidance.split(",")))
    for name in args.candidates.split(","):
        cfg = preset("mnist").updated(out=f"{args.out}/{name}", max_train_steps=args.train_steps or 10**6,
                                      max_minutes=args.minutes,
                                      sample_every=0, checkpoint_every=10**6, log_every=50,
                                      **CANDIDATES[name])
        trainer = Trainer(cfg, data=data, overwrite=True)  # a measurement: a fresh run every time
        t0 = time.perf_counter()
        losses = []
        trainer.fit(progress=False, on_log=lambda tr, rec: losses.append(rec["loss"]))
        rate = trainer.step * cfg.batch_size / (time.perf_counter() - t0)
        pipe = trainer.pipeline()
        cols = []
        for g in args.guidance.split(","):
            r = evaluate(pipe, feat_net, real_feats, args.n, float(g), args.steps)
            cols.append(f"{r['fid']:10.2f} {r['class_acc']:10.3f}")
        loss = sum(losses[-5:]) / max(1, len(losses[-5:]))
        print(f"{name:10s} {trainer.step:6d} {rate:6.0f} {loss:7.4f}  " + "  ".join(cols), flush=True)


if __name__ == "__main__":
    main()
