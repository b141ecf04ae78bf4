"""Why latents? Pixel and latent diffusion trained for the same wall-clock budget on 64x64 colour shapes.

    OMP_NUM_THREADS=1 python bench/latent_vs_pixel.py                  # ~15 min on one core (docs/latent.md)
    python bench/latent_vs_pixel.py --budget-minutes 30 --ae-minutes 20 --n-eval 500   # a quiet machine

1. The KL autoencoder (kl-f4: 64x64x3 -> 16x16x3, 16x fewer values) trains for --ae-minutes
   (`undiffuse train-autoencoder`); its latent scale and held-out reconstruction are measured.
2. The same U-Net (same widths, levels and attention at 8x8; same parameter count, since both
   have 3 input channels) trains on pixels and on the scaled latents, each for --budget-minutes
   (`undiffuse train ... --max-minutes`, and `--autoencoder RUN` for the latent one).
3. Each samples --n-eval images with DDIM (--sample-steps); images/s include the latent decoding.
4. Quality: the FID-style distance to held-out real shapes in the 128-d features of the shapes
   judge (``metrics.adherence.ShapesNet``, which reads every object's colour, shape and size on
   >= 99.5 % of real images; trained on first use, then cached), the repo's FID-style score for
   shapes (Inception weights cannot be downloaded offline). The judge reads 32x32 images, so the
   samples are downsampled (antialiased) first: detail finer than 2 pixels is not measured. Beside
   it: the real-data floor (two disjoint real sets of the same size) and the autoencoder's own
   floor (reconstructions of one real set against the other).

Writes --out/latent_vs_pixel.json, the Markdown table (also printed), the autoencoder's
reconstruction grid and both sample grids.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from undiffuse.checkpoint import read_json
from undiffuse.config import TrainConfig
from undiffuse.data import load_shapes
from undiffuse.latent.measure import encode_means, reconstruct, save_reconstructions
from undiffuse.latent.cli import AUTOENCODER_DEFAULTS
from undiffuse.latent.runs import load_autoencoder
from undiffuse.data.base import resize_images
from undiffuse.metrics import fid_from_features, kid
from undiffuse.metrics.adherence import get_judge
from undiffuse.trainer import Trainer
from undiffuse.viz import save_grid

#: One U-Net for both: 64 -> 32 -> 16 -> 8 on pixels, 16 -> 8 -> 4 -> 2 on latents; attention at 8x8.
NET = {"type": "unet", "channels": 32, "channel_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [8],
       "dropout": 0.0}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget-minutes", type=float, default=3.0, help="training wall clock of each diffusion model")
    p.add_argument("--ae-minutes", type=float, default=4.0, help="training wall clock of the autoencoder")
    p.add_argument("--n-train", type=int, default=3000, help="training shapes")
    p.add_argument("--n-eval", type=int, default=200, help="samples per model, and real images per reference set")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", default="bench_out/latent_vs_pixel", help="run directories and results")
    return p.parse_args()


def train(cfg: TrainConfig, data) -> dict:
    """Train ``cfg`` on ``data``: its steps, seconds of training (setup, i.e. encoding for the latent
    run, apart) and images/s (the median of the logged windows after the first, which holds warm-up)."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg, data=data)
    setup = time.perf_counter() - t0
    trainer.fit(progress=False)
    log = [json.loads(line) for line in (Path(cfg.out) / "log.jsonl").read_text().splitlines()]
    if not log:
        raise SystemExit(f"{cfg.out}: no log line within the budget; give more minutes")
    rates = [r["images_per_s"] for r in log[1:]] or [log[-1]["images_per_s"]]
    return {"steps": trainer.step, "setup_s": setup, "train_s": log[-1]["elapsed_s"],
            "train_images_per_s": statistics.median(rates), "final_loss": log[-1]["loss"], "trainer": trainer}


def sample(pipe, n: int, steps: int, batch: int = 50) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    x = torch.cat([pipe.sample(min(batch, n - i), sampler="ddim", num_inference_steps=steps, seed=i)
                   for i in range(0, n, batch)])
    return x, n / (time.perf_counter() - t0)


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    data = load_shapes(n=args.n_train, image_size=64)
    real = load_shapes(n=2 * args.n_eval, split="test", include_heldout=False, image_size=64).x
    real_a, real_b = real[:args.n_eval], real[args.n_eval:]
    common = dict(data="shapes", image_size=64, class_conditional=False, batch_size=args.batch_size,
                  max_train_steps=10**7, checkpoint_every=10**7, sample_every=0, log_every=5, seed=0)

    ae_cfg = AUTOENCODER_DEFAULTS.updated(**common, max_minutes=args.ae_minutes, out=str(out / "ae"),
                                            lr_schedule="constant")
    ae_info = train(ae_cfg, data)
    ae, record = load_autoencoder(out / "ae")
    ae_entry = read_json(out / "ae" / "config.json")["autoencoder"]
    save_reconstructions(ae, real_a[:8], out / "reconstructions.png")
    q = ae.encode(real_a[:64])
    ratio = float((q.std.mean() / encode_means(ae, data.x[:1024]).std()).detach())  # posterior std vs spread

    runs, samples = {}, {}
    for name, extra in (("pixel", {}), ("latent", {"autoencoder": str(out / "ae")})):
        cfg = TrainConfig(**common, net=NET, max_minutes=args.budget_minutes, lr_schedule="constant", num_samples=8,
                          sample_steps=10, out=str(out / name), **extra)
        runs[name] = train(cfg, data)
        pipe = runs[name].pop("trainer").pipeline()
        samples[name], runs[name]["sample_images_per_s"] = sample(pipe, args.n_eval, args.sample_steps)
        save_grid(samples[name][:64], out / f"samples_{name}.png", nrow=8)

    judge = get_judge("shapes")

    def features(x: torch.Tensor) -> torch.Tensor:
        return judge.features(resize_images(x.clamp(-1, 1), 32))

    ref = features(real_b)

    def quality(x: torch.Tensor) -> dict[str, float]:
        """FID-style (biased upward at small n) and KID (unbiased; its standard error over subsets)."""
        f = features(x)
        k, k_err = kid(f, ref, subset_size=len(x) // 2)
        return {"fid": fid_from_features(f, ref), "kid": k, "kid_stderr": k_err}

    for name, x in samples.items():
        save_file({"samples": x.contiguous()}, str(out / f"samples_{name}.safetensors"))  # to measure again later
    result = {"args": vars(args), "cpu": _cpu(), "threads": torch.get_num_threads(),
              "autoencoder": {**{k: v for k, v in ae_info.items() if k != "trainer"}, **ae_entry,
                              "posterior_std_over_latent_std": ratio, **quality(reconstruct(ae, real_a))},
              "feature_net": {"judge": judge.info, "resolution": 32}, "floor": quality(real_a),
              "models": {k: {**v, **quality(samples[k])} for k, v in runs.items()}}
    (out / "latent_vs_pixel.json").write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "latent_vs_pixel.md").write_text(table)
    print(table)


def markdown(r: dict) -> str:
    a, m, ae = r["args"], r["models"], r["autoencoder"]

    def q(v: dict) -> str:
        return f"{v['fid']:.0f} | {v['kid']:.1f} ± {v['kid_stderr']:.1f}"

    rows = [f"| model | train steps | train images/s | sampling images/s | FID-style (n = {a['n_eval']}) | KID |",
            "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {name} | {v['steps']} | {v['train_images_per_s']:.1f} | {v['sample_images_per_s']:.2f} | {q(v)} |"
             for name, v in m.items()]
    rows += [f"| real-data floor (real vs real) | | | | {q(r['floor'])} |",
             f"| autoencoder reconstructions (the latent model's floor) | | | | {q(ae)} |", "",
             f"Budget {a['budget_minutes']} min per diffusion model, {a['ae_minutes']} min for the autoencoder "
             f"({ae['steps']} steps, {ae['train_images_per_s']:.1f} images/s; latent scale {ae['scaling_factor']:.4f}; "
             f"held-out PSNR {ae['reconstruction_heldout']['psnr_db']:.2f} dB, SSIM "
             f"{ae['reconstruction_heldout']['ssim']:.4f}); speed-up in training images/s "
             f"{m['latent']['train_images_per_s'] / m['pixel']['train_images_per_s']:.1f}x, in sampling "
             f"{m['latent']['sample_images_per_s'] / m['pixel']['sample_images_per_s']:.1f}x. DDIM, "
             f"{a['sample_steps']} steps. CPU: {r['cpu']}, {r['threads']} thread(s)."]
    return "\n".join(rows) + "\n"


def _cpu() -> str:
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return os.uname().machine


if __name__ == "__main__":
    main()
