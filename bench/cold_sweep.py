"""One-factor sweep of the cold restorer's recipe at a fixed small budget (issue: cold diffusion).

    python bench/cold_sweep.py train --rows baseline residual standardize --steps 250
    python bench/cold_sweep.py measure --steps 250        # -> docs/cold_sweep.json
    python bench/cold_sweep.py table                      # Markdown

Every row trains the MNIST blur restorer of the paper's setting (T = 20, 11 x 11 kernel, sigma 7,
circular; the ``blur`` process's defaults) on the 4000-digit training split of
``bench/cold_restoration.py`` with the MNIST demo's recipe (``preset("mnist")``, unconditional),
changing ONE setting of ``ROWS`` from ``baseline``. Rows whose degradation differs (``kernel-*``,
``T=*``) restore from their own ``D(x0, T)``: they say what a cheaper degradation gives, not how to
restore the paper's. Measured on 300 held-out digits restored from ``D(x0, T)`` in one network call
(direct) and with Algorithm 2 (T calls): RMSE, SSIM, FID-style against the held-out digits (floor:
training digits against the same), and class agreement (the share of restorations that the MNIST
feature net assigns to the digit they came from). Training time is per row, one thread, summed from
log.jsonl (steps only; it survives a resume), on a machine shared with other jobs: compare rows by it
only roughly.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cold_restoration import _merge, splits

ROOT, DOCS = Path("runs/cold-sweep"), Path("docs")
BASE = dict(process="blur", data="mnist")
ROWS: dict[str, dict] = {
    "baseline": {},
    "residual": dict(residual=True),
    "standardize": dict(standardize_input=True),
    "standardize+residual": dict(standardize_input=True, residual=True),
    "fp32": dict(bf16=False),
    "l2": dict(loss="l2"),
    "t-linear": dict(severity_weighting="linear"),
    "lr=5e-4": dict(lr=5e-4),
    "warmup=25": dict(warmup_steps=25),
    "ema=0.99": dict(ema_decay=0.99),
    "batch=32": dict(batch_size=32),
    "net=mnist-small": dict(net="mnist-small"),
    "kernel-linear": dict(process="blur:schedule=linear:sigma=0.5"),
    "T=10": dict(process="blur:T=10"),
    # not one factor: the recipe with the best single change besides it, to see whether they add up
    "standardize+residual+l2": dict(standardize_input=True, residual=True, loss="l2"),
}


def config(name: str, steps: int):
    from undiffuse.config import preset

    spec = {**BASE, **ROWS[name]}
    return preset("mnist").updated(class_conditional=False, out=str(ROOT / name), max_train_steps=steps,
                                   sample_every=0, checkpoint_every=50, num_samples=16, **spec)


def train(names: list[str], steps: int) -> None:
    from undiffuse.trainer import Trainer

    for name in names:
        cfg, out = config(name, steps), ROOT / name
        if (out / "done.json").exists():
            continue
        trainer = Trainer(cfg, data=splits("mnist")[0])
        # A row stopped part-way goes on from its last checkpoint (its time: ``training_seconds``).
        resumed = trainer.resume()
        trainer.fit()
        (out / "done.json").write_text(json.dumps({"threads": torch.get_num_threads(), "resumed": resumed}))
        print(f"== {name} trained", flush=True)


def training_seconds(run: Path, batch_size: int) -> float:
    """Seconds spent in training steps, from log.jsonl's images/s per logged interval: the sum stays
    right across a stop and ``--resume`` (``elapsed_s`` restarts at a resume)."""
    seconds, last = 0.0, 0
    for line in (run / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        seconds += (entry["step"] - last) * batch_size / entry["images_per_s"]
        last = entry["step"]
    return seconds


def measure(names: list[str], out: Path, n: int = 300, seed: int = 0) -> None:
    from undiffuse import load
    from undiffuse.metrics import (class_agreement, extract_features, fid_from_features, get_feature_net,
                                   predict_labels, rmse, ssim)

    train_x, held = splits("mnist")
    x0, labels = held.x[:n], held.labels[:n]
    net, _ = get_feature_net("mnist")
    ref = extract_features(net, x0)
    floor = fid_from_features(extract_features(net, train_x.x[:n]), ref)
    for name in names:
        done = ROOT / name / "done.json"
        if not done.exists():
            continue
        pipe, bf16 = load(ROOT / name), config(name, 1).bf16
        x_t = pipe.degrade(x0)
        for method, algorithm in (("direct", "direct"), ("Alg. 2", "improved")):
            x = pipe.restore(x_t, sampler=algorithm, bf16=bf16).clamp(-1, 1)
            row = {"row": name, "method": method, "n": n, **json.loads(done.read_text()),
                   "train_seconds": training_seconds(ROOT / name, config(name, 1).batch_size),
                   "setting": ROWS[name], "rmse": rmse(x, x0).mean().item(), "ssim": ssim(x, x0).mean().item(),
                   "fid": fid_from_features(extract_features(net, x), ref), "fid_floor": floor,
                   "class_agreement": class_agreement(predict_labels(net, x), labels)}
            print(json.dumps(row), flush=True)
            _merge(out, [row], key=("row", "method"))


def table(path: Path) -> str:
    rows = json.loads(path.read_text()) if path.exists() else []
    lines = ["| row (changed from baseline) | method | RMSE | SSIM | FID-style (floor) | class agreement | train min |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (list(ROWS).index(r["row"]), r["method"])):
        setting = ", ".join(f"{k}={v}" for k, v in r["setting"].items()) or "-"
        lines.append(f"| {r['row']} ({setting}) | {r['method']} | {r['rmse']:.4f} | {r['ssim']:.4f} | "
                     f"{r['fid']:.1f} ({r['fid_floor']:.1f}) | {r['class_agreement']:.3f} | "
                     f"{r['train_seconds'] / 60:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global ROOT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["train", "measure", "table"])
    p.add_argument("--rows", nargs="*", default=None, help=f"subset of {list(ROWS)}")
    p.add_argument("--steps", type=int, default=250, help="training steps of every row")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--root", default=str(ROOT), help="where the runs live")
    p.add_argument("--docs", default=str(DOCS))
    args = p.parse_args(argv)
    ROOT = Path(args.root)
    torch.set_num_threads(args.threads)
    names = args.rows or list(ROWS)
    unknown = set(names) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {sorted(unknown)}; choose from {list(ROWS)}")
    if args.phase == "train":
        train(names, args.steps)
    elif args.phase == "measure":
        measure(names, Path(args.docs) / "cold_sweep.json")
    print(table(Path(args.docs) / "cold_sweep.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
