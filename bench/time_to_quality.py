"""The demo's time to quality: FID-style and class accuracy of its samples against wall-clock minutes.

    python bench/time_to_quality.py setup                       # fresh clone + `make setup`, timed
    python bench/time_to_quality.py train --recipes demo        # alone on the machine: times count
    python bench/time_to_quality.py measure --recipes demo      # n = 2000 per snapshot; any time
    python bench/time_to_quality.py table                       # Markdown, from docs/time_to_quality.json

``train`` runs what ``make demo`` runs (``preset("mnist")`` on all 5,000 MNIST digits, its preview
and final pictures included) with one lever of ``RECIPES`` changed, and keeps the EMA weights at
every ``--every`` steps with the wall-clock seconds since the process started (imports and data
loading included). ``measure`` samples each snapshot with a fast setting (DPM-Solver++(2M), 10 steps,
classifier-free guidance w = 2) in the CLI's default precision (``compiling.bf16_by_default``; digit k asked
for sample k mod 10) and scores n samples with ``undiffuse.evaluate.sample_quality``: FID-style
against half the digits beside the real-data floor, and class accuracy (the feature net reads the
digit that was asked for). A curve's minutes are its training process's; ``setup`` measures the
minutes a fresh clone spends in ``make setup`` before it, to add for the time from a fresh clone.
"""
from __future__ import annotations

import time

T0 = time.perf_counter()  # the process's start: the imports below are part of a user's wait

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path("runs/ttq")
OUT = Path("docs/time_to_quality.json")
#: One lever changed from ``make demo`` per row (docs/mnist_recipe.md has the recipe itself).
RECIPES: dict[str, dict] = {
    "demo": {"max_train_steps": 1000},           # the demo until session 8: 1000 steps of 64, lr 2e-3
    "demo-700": {"max_train_steps": 700},        # the same schedule in 700 steps: the default since session 8
    "demo-500": {"max_train_steps": 500},
    "demo-lr3e-3-700": {"max_train_steps": 700, "lr": 3e-3},
    # the recipe levers of issue #20, one at a time, each at the demo's 700 steps (session 9)
    "demo-edm-700": {"max_train_steps": 700, "process": "edm", "prediction": "edm", "weighting": "uniform"},
    "demo-uniform-700": {"max_train_steps": 700, "weighting": "uniform"},
    "demo-noema-700": {"max_train_steps": 700, "ema_decay": 0.0},
    "demo-bs32-1400": {"max_train_steps": 1400, "batch_size": 32},
    "demo-small-700": {"max_train_steps": 700, "net": "mnist-small"},
    # a second training seed of the demo and of its best lever
    "demo-700-seed1": {"max_train_steps": 700, "seed": 1},
    "demo-small-700-seed1": {"max_train_steps": 700, "net": "mnist-small", "seed": 1},
}
SAMPLING = dict(sampler="dpmpp_2m", num_inference_steps=10, guidance=2.0, seed=0)


def _config(name: str, every: int):
    from undiffuse.config import preset

    return preset("mnist").updated(out=str(ROOT / name), checkpoint_every=every, **RECIPES[name])


def train(name: str, every: int) -> None:
    from safetensors.torch import save_file

    from undiffuse.cli import final_pictures
    from undiffuse.data import load_dataset
    from undiffuse.trainer import Trainer

    cfg = _config(name, every)
    trainer = Trainer(cfg, data=load_dataset(cfg.data), overwrite=True)  # a measurement: always fresh
    snaps = Path(cfg.out) / "snapshots"
    rows = []

    def keep(tr, record) -> None:
        if record["step"] % every == 0 or record["step"] == cfg.max_train_steps:
            snaps.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().contiguous() for k, v in tr.ema.state_dict().items()}
            save_file(state, str(snaps / f"step-{record['step']:06d}.safetensors"))
            rows.append({"step": record["step"], "train_s": record["elapsed_s"],
                         "process_s": time.perf_counter() - T0, "loss": record["loss"]})

    trainer.fit(on_log=keep)
    final_pictures(trainer)  # as `undiffuse train` ends: loss curve and trajectory
    done = {"recipe": name, "settings": RECIPES[name], "snapshots": rows,
            "process_s_with_pictures": time.perf_counter() - T0, "machine": trainer.run_config()["machine"],
            "threads": torch.get_num_threads()}
    (Path(cfg.out) / "ttq_train.json").write_text(json.dumps(done, indent=1))
    print(json.dumps(done, indent=1))


def _results() -> dict:
    """docs/time_to_quality.json as recorded so far (recipes' rows and the set-up time)."""
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def measure(name: str, n: int) -> None:
    from undiffuse import load
    from undiffuse.compiling import bf16_by_default
    from undiffuse.evaluate import _sample, sample_quality
    from undiffuse.run_files import load_checked, read_run_config
    from undiffuse.sampling import SampleSpec

    run = ROOT / name
    trained = json.loads((run / "ttq_train.json").read_text())
    OUT.parent.mkdir(parents=True, exist_ok=True)
    results = _results()
    if results.get(name, {}).get("settings") != trained["settings"]:  # retrained otherwise: start over
        results[name] = {"settings": trained["settings"], "machine": trained["machine"],
                         "process_s_with_pictures": trained["process_s_with_pictures"], "rows": []}
    entry = results[name]
    pipe = load(run)
    bf16 = bf16_by_default(read_run_config(run), torch.device("cpu"))
    spec = SampleSpec.build(None, **SAMPLING, bf16=bf16)  # float32 against bf16: bench/bf16_sampling.py
    done = {r["step"] for r in entry["rows"]}
    for snap in trained["snapshots"]:
        if snap["step"] in done:
            continue
        load_checked(pipe.denoiser, run / "snapshots" / f"step-{snap['step']:06d}.safetensors")
        samples, requested, rate = _sample(pipe, n, spec, 100)
        q = sample_quality(samples, requested, "mnist", n)
        entry["rows"].append({**snap, "n": n, "bf16": bf16, "fid": q["fid"], "fid_floor": q["fid_floor"],
                              "class_accuracy": q["class_accuracy"], "precision": q["precision"],
                              "recall": q["recall"], "sampling_images_per_s": rate})
        results = {**_results(), name: entry}  # re-read: another recipe's measure may have written since
        OUT.write_text(json.dumps(results, indent=1))  # after each row: a stopped measure loses nothing
        print(f"{name} step {snap['step']}: {snap['process_s'] / 60:.1f} min, FID-style {q['fid']:.2f} "
              f"(floor {q['fid_floor']:.2f}), class accuracy {q['class_accuracy']:.3f}", flush=True)


def setup_minutes() -> None:
    """Clone this checkout into a temporary folder and time ``make setup`` there (pip's cache warm)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["git", "clone", "-q", ".", tmp], check=True)
        t = time.perf_counter()
        subprocess.run(["make", "-C", tmp, "setup"], check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
    results = _results()
    results["_setup"] = {"make_setup_s": seconds}
    OUT.write_text(json.dumps(results, indent=1))
    print(f"make setup in a fresh clone: {seconds:.0f} s")


def table() -> None:
    results = _results()
    setup = results.get("_setup", {}).get("make_setup_s")
    print("| recipe | step | minutes (process) | minutes from a fresh clone | FID-style (floor) | class accuracy "
          "| precision / recall |")
    print("|---|---|---|---|---|---|---|")
    for name, entry in results.items():
        if name.startswith("_"):
            continue
        for r in sorted(entry["rows"], key=lambda r: r["step"]):
            fresh = "" if setup is None else f"{(r['process_s'] + setup) / 60:.1f}"
            print(f"| {name} | {r['step']} | {r['process_s'] / 60:.1f} | {fresh} | {r['fid']:.2f} "
                  f"({r['fid_floor']:.2f}) | {r['class_accuracy']:.3f} | {r['precision']:.3f} / {r['recall']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["setup", "train", "measure", "table"])
    ap.add_argument("--recipes", nargs="*", default=["demo"], help=f"of {list(RECIPES)}")
    ap.add_argument("--every", type=int, default=250, help="keep the EMA weights every N steps")
    ap.add_argument("--n", type=int, default=2000, help="samples per snapshot")
    args = ap.parse_args()
    if args.command == "train" and len(args.recipes) != 1:
        ap.error("train one recipe per process: its minutes count from the process's start")
    for name in args.recipes if args.command in ("train", "measure") else [None]:
        if args.command == "train":
            train(name, args.every)
        elif args.command == "measure":
            measure(name, args.n)
        elif args.command == "setup":
            setup_minutes()
        else:
            table()


if __name__ == "__main__":
    main()
