"""Cold diffusion measured (Bansal et al. 2022): restoration tables and generation beside DDPM.

    python bench/cold_restoration.py train --runs blur --root runs/cold-long   # resumable; hours
    python bench/cold_restoration.py restore --runs blur --root runs/cold-long # -> docs/cold_restoration.json
    python bench/cold_restoration.py generate --root runs/cold-long            # -> docs/cold_generation.json
                                                                   # (rows: bench/cold_generation.py)
    python bench/cold_restoration.py ceiling          # what D(x0, T) keeps of the digit's class
    python bench/cold_restoration.py table            # the tables as Markdown

Every run trains through undiffuse's Trainer with the MNIST demo's recipe (``preset("mnist")``:
the mnist-demo U-Net, AdamW, batch 64, bf16), unconditional, for the steps of ``RUNS``; the cold
MNIST runs of this round add ``RECIPE`` (chosen by ``bench/cold_sweep.py``). Rows record the recipe
and steps they were measured with (session 3's rows: 500 steps, 150 for the photo runs, paper's
x0 prediction). ``train`` resumes each run from its newest checkpoint, so a long run can be stopped
and carried on. The tables restore images of a HELD-OUT split disjoint from the training one:

* MNIST: ``load_dataset("mnist").split(0.2, seed=0)``: 4000 training and 1000 held-out digits;
* photos (desaturate, snow): scikit-learn's two sample photographs halved and cut into
  32 x 32 patches every 8 pixels; patches whose rows start in the top 15 of 23 patch rows train,
  those in the bottom 4 are held out, so no training patch shares a pixel with a held-out one.

The run names and settings are ``RUNS``; the DDPM run differs from the blur run only in its process
(same net, steps, batch, optimiser): the "same size and training budget" comparison.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from undiffuse.config import preset
from undiffuse.data import TensorData, load_dataset
from undiffuse.data.builtin import load_photos

ROOT = Path("runs/cold")
DOCS = Path("docs")
#: The restorer recipe chosen by the one-factor sweep (bench/cold_sweep.py, docs/cold.md): the network
#: sees a standardized input and predicts the residual x0 - x_t.
RECIPE = dict(standardize_input=True, residual=True)
RUNS: dict[str, dict] = {
    "blur": dict(process="blur", data="mnist", max_train_steps=3500, **RECIPE),
    # The Gaussian reference for generation: the same net, optimiser and steps as "blur".
    "ddpm": dict(process="ddpm:cosine:1000", data="mnist", max_train_steps=3500),
    "mask": dict(process="mask", data="mnist", max_train_steps=1000, **RECIPE),
    # Also the second generating degradation: a mixture over the 4 x 4 block means of x_T.
    "pixelate": dict(process="pixelate", data="mnist", max_train_steps=1500, **RECIPE),
    "desaturate": dict(process="desaturate", data="photos", max_train_steps=400, **RECIPE),
    "snow": dict(process="snow", data="photos", max_train_steps=150),
    # Animorphosis: photo patches fade into digits (restored back to MNIST), T = 200.
    "fade": dict(process="fade:source=photos", data="mnist", max_train_steps=1000, **RECIPE),
    # Twice the budget, carried on from the 3500-step runs: the cosine decay is stretched to 7000
    # steps, so the learning rate restarts at half its peak (a warm restart, the same for both).
    "blur-7k": dict(process="blur", data="mnist", max_train_steps=7000, continue_from="blur", **RECIPE),
    "ddpm-7k": dict(process="ddpm:cosine:1000", data="mnist", max_train_steps=7000, continue_from="ddpm"),
    "fade-3k": dict(process="fade:source=photos", data="mnist", max_train_steps=3000, continue_from="fade", **RECIPE),
    # The sweep's best Algorithm 2 row at 200 steps (recipe + L2) at the blur run's budget: L2 alone
    # changed from "blur", so the pair measures the loss at 3500 steps.
    "blur-l2": dict(process="blur", data="mnist", max_train_steps=3500, loss="l2", **RECIPE),
    # ... carried on to 7000 steps as blur-7k carries on blur (the same warm restart): against ddpm-7k.
    "blur-l2-7k": dict(process="blur", data="mnist", max_train_steps=7000, loss="l2", continue_from="blur-l2",
                       **RECIPE),
}
#: Restoration steps where every severity would take too long on a CPU (fade: 20 of T = 200, evenly
#: spaced); the others restore through every severity, as the paper does.
RESTORE_STEPS = {"fade": 20, "fade-3k": 20}
PHOTO_ROWS, TRAIN_ROWS, HELD_FROM_ROW = 23, 15, 19  # patch rows per photo at stride 8; see above


def splits(dataset: str) -> tuple[TensorData, TensorData]:
    """(training, held-out) images of a dataset, as the module docstring describes."""
    if dataset == "mnist":
        return load_dataset("mnist").split(0.2, seed=0)
    data = load_photos()
    per_photo = len(data) // 2
    cols = per_photo // PHOTO_ROWS
    row = (torch.arange(len(data)) % per_photo) // cols
    return data.select(torch.nonzero(row < TRAIN_ROWS)[:, 0]), data.select(torch.nonzero(row >= HELD_FROM_ROW)[:, 0])


def train(names: list[str]) -> None:
    from undiffuse.trainer import Trainer

    for name in names:
        spec = dict(RUNS[name])
        dataset, parent = spec.pop("data"), spec.pop("continue_from", None)
        out = ROOT / name
        if (out / "done").exists():
            continue
        if parent is not None and not out.exists():
            _copy_run(ROOT / parent, out)
        cfg = preset("mnist").updated(data=dataset, class_conditional=False, out=str(out), sample_every=1000,
                                      checkpoint_every=250, **spec)
        trainer = Trainer(cfg, data=splits(dataset)[0])
        trainer.resume()
        print(f"== {name}: {len(trainer.data)} training images, {cfg.process}", flush=True)
        trainer.fit()
        (out / "done").write_text("")


def _copy_run(src: Path, out: Path) -> None:
    """Start ``out`` as a copy of the finished run ``src`` (its newest checkpoint, config and log),
    for a run that carries ``src`` on with a longer budget."""
    import shutil

    if not (src / "done").exists():
        raise SystemExit(f"{out.name} carries on {src}: train that run first (`train --runs {src.name}`)")
    tmp = out.with_name(f".{out.name}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("done", "samples", "cold_prior.json"))
    (tmp / "config.json").write_text((tmp / "config.json").read_text().replace(str(src), str(out)))
    tmp.rename(out)


def _fid(net, fake: torch.Tensor, real_feats: torch.Tensor) -> float:
    from undiffuse.metrics import extract_features, fid_from_features

    return fid_from_features(extract_features(net, fake.clamp(-1, 1)), real_feats)


def _scores(ref: tuple, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """FID-style (with its floor), and class agreement with ``labels`` when given."""
    from undiffuse.metrics import class_agreement, predict_labels

    out = {"fid": _fid(ref[0], x, ref[1]), "fid_floor": ref[2]}
    if labels is not None:
        out["class_agreement"] = class_agreement(predict_labels(ref[0], x.clamp(-1, 1)), labels)
    return out


def _feature_reference(dataset: str, held: TensorData, n: int) -> tuple | None:
    """(feature net, held-out features, floor): the FID-style score of ``n`` TRAINING images
    against the held-out ones is the floor a perfect model reaches at this n."""
    if dataset != "mnist":
        return None  # no feature network for photo patches (two labels would make a meaningless one)
    from undiffuse.metrics import extract_features, get_feature_net

    net, _ = get_feature_net("mnist")
    ref = extract_features(net, held.x[:n])
    return net, ref, _fid(net, splits(dataset)[0].x[:n], ref)


def restore(names: list[str], out: Path, n: int = 300, seed: int = 0) -> list[dict]:
    """Degrade the held-out images to T, restore them three ways, score against the truth."""
    from undiffuse import load
    from undiffuse.metrics import rmse, ssim
    from undiffuse.pictures import save_restoration_strip

    rows = []
    for name in names:
        if RUNS[name]["process"].startswith("ddpm"):
            continue
        pipe, dataset = load(ROOT / name), RUNS[name]["data"]
        held = splits(dataset)[1]
        x0 = held.x[:n]
        deg = pipe.degradation
        state = deg.sample_state(tuple(x0.shape), torch.Generator().manual_seed(seed))
        x_t = pipe.degrade(x0, state=state)
        outputs = {"degraded": x_t}
        for label, algorithm in (("Alg. 1", "naive"), ("Alg. 2", "improved"), ("direct", "direct")):
            outputs[label] = pipe.restore(x_t, sampler=algorithm, state=state, bf16=True,
                                          num_inference_steps=RESTORE_STEPS.get(name))
        ref = _feature_reference(dataset, held, len(x0))
        for label, x in outputs.items():
            x = x.clamp(-1, 1)  # scored as the images shown: a diverging Algorithm 1 saturates
            row = {"process": name, "T": deg.num_steps, "n": len(x0), "method": label,
                   "restoration_steps": RESTORE_STEPS.get(name, deg.num_steps),
                   "train_steps": trained_steps(ROOT / name), "recipe": _recipe(ROOT / name),
                   "rmse": rmse(x, x0).mean().item(), "ssim": ssim(x, x0).mean().item()}
            if ref is not None:
                row.update(_scores(ref, x, held.labels[:n]))
            rows.append(row)
            print(json.dumps(row), flush=True)
        _merge(out, rows[-len(outputs):], key=("process", "method"))
        save_restoration_strip(pipe, held.x[:10], DOCS / f"cold_restore_{name}.png", seed=seed,
                               num_inference_steps=RESTORE_STEPS.get(name))
    return rows


#: The steps of the rows measured before rows recorded them (session 3's runs).
_OLD_STEPS = {"mnist": 500, "photos": 150}


def _recipe(run: Path) -> str:
    """The restorer settings that differ from the paper's (x0, raw input, L1), as saved."""
    cfg = json.loads((run / "config.json").read_text())
    d = cfg["denoiser"]
    parts = [k for k in ("standardize_input", "residual") if d.get(k)]
    parts += ["l2"] if cfg["train"].get("loss") == "l2" else []
    return "+".join(parts) or "paper (x0)"


def trained_steps(run: Path) -> int:
    """The optimiser steps of a run's newest checkpoint (what the tables measured)."""
    return int((run / "checkpoints" / "latest").read_text().strip().split("-")[1])


def ceiling(out: Path) -> list[dict]:
    """What the fully blurred digit still says about its class: classifiers trained on the lowest
    Fourier modes of D(x0, T) (float32) of the training split, scored on the held-out split. Their
    accuracy is a lower bound on what a restorer's class agreement could reach."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from undiffuse.cold.degradations import make_degradation

    train_split, held = splits("mnist")
    rows = []
    for modes in (1, 2):
        deg = make_degradation(f"blur:summary_modes={modes}")  # the paper's blur, read in 9 or 25 modes

        def features(x: torch.Tensor):
            return deg.summarize(deg(x, deg.num_steps).double()).numpy()

        a, b = features(train_split.x), features(held.x)
        for name, clf in (("logistic regression", LogisticRegression(max_iter=5000, C=10)),
                          ("MLP 256-256", MLPClassifier((256, 256), max_iter=2000, random_state=0))):
            model = make_pipeline(StandardScaler(), clf).fit(a, train_split.labels.numpy())
            row = {"features": f"{(2 * modes + 1) ** 2} Fourier modes of D(x0, T)", "classifier": name,
                   "held_out_accuracy": float(model.score(b, held.labels.numpy()))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    out.write_text(json.dumps(rows, indent=1))
    return rows


def tables(docs: Path) -> str:
    """The Markdown tables of docs/cold_restoration.json and docs/cold_generation.json."""
    lines = []
    restore_file, generate_file = docs / "cold_restoration.json", docs / "cold_generation.json"
    if restore_file.exists():
        methods = ["degraded", "Alg. 1", "Alg. 2", "direct"]
        rows = sorted(json.loads(restore_file.read_text()),
                      key=lambda r: (list(RUNS).index(r["process"]), methods.index(r["method"])))
        lines += ["| process (T) | recipe, steps | held-out n | method | RMSE | SSIM | FID-style (floor) | class agreement |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            fid = f"{r['fid']:.2f} ({r['fid_floor']:.2f})" if "fid" in r else "-"
            agree = f"{r['class_agreement']:.3f}" if "class_agreement" in r else "-"
            lines.append(f"| {r['process']} ({r['T']}) | {r.get('recipe', 'paper (x0)')}, {r.get('train_steps', _OLD_STEPS[RUNS[r['process']]['data']])} | "
                         f"{r['n']} | {r['method']} | {r['rmse']:.4f} | {r['ssim']:.4f} | {fid} | {agree} |")
        lines.append("")
    if generate_file.exists():
        lines += ["| model and sampler | steps trained | n | FID-style (floor) | precision | recall | classes present |",
                  "|---|---|---|---|---|---|---|"]
        for r in json.loads(generate_file.read_text()):
            lines.append(f"| {r['model']} | {r.get('train_steps', 500)} | {r['n']} | {r['fid']:.2f} ({r['fid_floor']:.2f}) | "
                         f"{r['precision']:.3f} | {r['recall']:.3f} | {r.get('classes_present', '-')} |")
    return "\n".join(lines)


def _merge(out: Path, rows: list[dict], key: tuple[str, ...]) -> None:
    """Replace the rows of the same key in ``out`` (JSON list), keep the others."""
    old = json.loads(out.read_text()) if out.exists() else []
    new = {tuple(r[k] for k in key) for r in rows}
    out.write_text(json.dumps([r for r in old if tuple(r[k] for k in key) not in new] + rows, indent=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=["train", "restore", "generate", "prior-sweep", "ceiling", "table"])
    p.add_argument("--runs", nargs="*", default=None, help=f"subset of {list(RUNS)}")
    p.add_argument("--models", nargs="*", default=None,
                   help="generate: rows to measure (default: every row of cold_generation._generators "
                        "whose run is trained)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--root", default="runs/cold", help="where the runs live")
    p.add_argument("--n", type=int, default=None,
                   help="held-out images restored (default 300) / images generated (default 600)")
    p.add_argument("--docs", default="docs", help="where tables (JSON) and pictures go")
    p.add_argument("--steps", type=int, default=None, help="override the training steps (smoke tests)")
    args = p.parse_args(argv)
    global ROOT, DOCS
    ROOT, DOCS = Path(args.root), Path(args.docs)
    if args.steps:
        for spec in RUNS.values():
            spec["max_train_steps"] = args.steps
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.runs or list(RUNS)
    if args.phase == "train":
        train(names)
    elif args.phase == "restore":
        restore(names, DOCS / "cold_restoration.json", n=args.n or 300)
    elif args.phase == "prior-sweep":
        from cold_generation import prior_sweep

        run = (args.runs or ["pixelate"])[0]
        prior_sweep(ROOT, DOCS / f"cold_prior_sweep_{run}.json", run=run)
    elif args.phase == "ceiling":
        ceiling(DOCS / "cold_blur_ceiling.json")
    elif args.phase == "generate":
        from cold_generation import generate

        generate(ROOT, DOCS, n=args.n or 600, keys=args.models)
    print(tables(DOCS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
