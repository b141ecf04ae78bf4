"""Quality against network evaluations (NFE) for every sampler and step schedule, with Hugging Face
diffusers' schedulers driving the same trained network in the same run.

    python bench/sampler_frontier.py --run runs/demo                      # the full sweep
    python bench/sampler_frontier.py --run runs/demo --n 100 --nfe 10     # a quick pilot
    python bench/sampler_frontier.py --plot-only                          # redraw from the JSON

Every configuration draws the same n class-balanced samples (seed fixed, bf16 autocast, classifier-
free guidance scale --guidance) and is scored by the FID-style distance in the MNIST feature net's
space against n held-out real digits (``undiffuse.evaluate.sample_quality``), beside the floor that
n other real digits reach. diffusers gets eps = our denoiser's eps at its timestep n (level
(n + 1) / N) with its own sampling loop (``scale_model_input``, ``step``); its betas
("squaredcos_cap_v2") equal our cosine DDPM's (tests/test_samplers_peer.py). Results are appended
to --out (JSON) as they finish, so an interrupted sweep resumes; the table and the plot are drawn
from that file.
"""
from __future__ import annotations

import argparse
import inspect
import time
from pathlib import Path

import torch

from sweeps import add_common, record, sweep_main
from undiffuse import load
from undiffuse.evaluate import sample_quality
from undiffuse.sampling import SampleSpec
from undiffuse.samplers import SPACINGS, get_sampler

# The spacings run for each sampler: the best one or two of a pilot over all of them (n = 100,
# NFE 10; docs/samplers.md). --all-spacings runs every one listed in SPACINGS_ALL.
OURS = {
    "ddim": ["trailing"], "euler_ancestral": ["trailing"], "heun": ["karras"],
    "dpmpp_2m": ["trailing", "logsnr"], "dpmpp_3m": ["logsnr", "trailing"],
    "dpmpp_2m_sde": ["karras", "trailing"], "dpmpp_3m_sde": ["logsnr", "trailing"], "heun_sde": ["karras"], "ddpm": ["trailing"], "pc": ["trailing"],
    "langevin": ["trailing"],
}
# diffusers scheduler: (class name, extra config, the timestep_spacings run ("karras": Karras sigmas))
DIFFUSERS = {
    "DDIM": ("DDIMScheduler", {"set_alpha_to_one": True}, ["trailing"]),
    "DDPM": ("DDPMScheduler", {}, ["trailing"]),
    "Euler": ("EulerDiscreteScheduler", {}, ["trailing"]),
    "EulerAncestral": ("EulerAncestralDiscreteScheduler", {}, ["linspace"]),
    "Heun": ("HeunDiscreteScheduler", {}, ["karras"]),
    "DPM++2M": ("DPMSolverMultistepScheduler", {}, ["trailing", "karras"]),
    "DPM++2M-SDE": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, ["karras", "trailing"]),
    "DPM++3M": ("DPMSolverMultistepScheduler", {"solver_order": 3}, ["karras", "trailing"]),
    "UniPC": ("UniPCMultistepScheduler", {}, ["trailing"]),
}
SPACINGS_ALL = {"undiffuse": ["trailing", "karras", "logsnr"], "diffusers": ["linspace", "leading", "trailing", "karras"]}


def ours(pipe, name: str, spacing: str, nfe: int, n: int, labels, args) -> tuple[torch.Tensor, int] | None:
    info = get_sampler(name)
    steps = info.steps_for_nfe(nfe)
    used = info.nfe(steps, info.options)
    if used > nfe or used < 0.8 * nfe:
        return None
    options = {"lower_order_final": False} if args.no_lower_order_final and name.startswith("dpmpp") else {}
    out = [pipe.sample(len(lab), sampler=name, num_inference_steps=steps, spacing=spacing, seed=args.seed + i,
                       class_labels=lab, guidance=args.guidance, bf16=True, **options)
           for i, lab in _batches(labels, args.batch)]
    return torch.cat(out), used


def diffusers_run(pipe, name: str, spacing: str, nfe: int, n: int, labels, args):
    import diffusers

    cls_name, extra, _ = DIFFUSERS[name]
    config = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
                  **extra)
    if spacing == "karras":
        config["use_karras_sigmas"] = True
    else:
        config["timestep_spacing"] = spacing
    sched = getattr(diffusers, cls_name)(**config)
    steps = max(s for s in range(1, nfe + 1) if _count(sched, s) <= nfe)
    used = _count(sched, steps)
    if used < 0.8 * nfe:
        return None
    spec = SampleSpec(class_labels=labels[:1], guidance=args.guidance) if pipe.takes_labels else SampleSpec()
    model = pipe.conditioning.guided(pipe.denoiser, spec, None)
    takes_generator = "generator" in inspect.signature(sched.step).parameters
    out = []
    for i, lab in _batches(labels, args.batch):
        g = torch.Generator().manual_seed(args.seed + i)
        step_kw = {"generator": g} if takes_generator else {}
        sched.set_timesteps(steps)
        x = torch.randn((len(lab), *pipe.shape), generator=g) * sched.init_noise_sigma
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            for t in sched.timesteps:
                level = (float(t) + 1) / 1000
                eps = model(sched.scale_model_input(x, t), torch.tensor(level, dtype=torch.float64), lab).eps
                x = sched.step(eps.float(), t, x, **step_kw).prev_sample
        out.append(x.float())
    return torch.cat(out), used


def _count(sched, steps: int) -> int:
    sched.set_timesteps(steps)
    return len(sched.timesteps)


def _batches(labels: torch.Tensor, batch: int):
    for i in range(0, len(labels), batch):
        yield i, labels[i:i + batch]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="runs/demo", help="a trained MNIST run directory (make demo)")
    p.add_argument("--n", type=int, default=500, help="samples per configuration")
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50, 100])
    p.add_argument("--samplers", nargs="*", default=list(OURS), help="ours to run")
    p.add_argument("--diffusers", nargs="*", default=list(DIFFUSERS), help="diffusers schedulers to run")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--all-spacings", action="store_true", help="every spacing, not the pilot's best")
    p.add_argument("--spacings", nargs="+", choices=SPACINGS, default=None,
                   help="these spacings for each of ours (the MNIST check of docs/samplers.md, 'Default schedules')")
    p.add_argument("--no-lower-order-final", action="store_true",
                   help="our DPM-Solver++ samplers without their lower-order final steps (use another --out)")
    add_common(p, "docs/sampler_frontier.json")
    sweep_main(p, run, table, plot)


def run(args, results: list[dict], out: Path) -> None:
    pipe = load(args.run)
    labels = torch.arange(args.n) % pipe.num_classes if pipe.num_classes else torch.zeros(args.n)
    done = {(r["lib"], r["sampler"], r["spacing"], r["nfe_budget"], r["n"], r["guidance"]) for r in results}
    def spacings(lib: str, listed: list[str]) -> list[str]:
        if lib == "undiffuse" and args.spacings:
            return args.spacings
        return SPACINGS_ALL[lib] if args.all_spacings else listed

    jobs = [("undiffuse", s, sp) for s in args.samplers for sp in spacings("undiffuse", OURS[s])] + \
           [("diffusers", s, sp) for s in args.diffusers for sp in spacings("diffusers", DIFFUSERS[s][2])]
    for nfe in args.nfe:
        for lib, name, spacing in jobs:
            if (lib, name, spacing, nfe, args.n, args.guidance) in done:
                continue
            t0 = time.perf_counter()
            fn = ours if lib == "undiffuse" else diffusers_run
            row = {"lib": lib, "sampler": name, "spacing": spacing, "nfe_budget": nfe,
                   "n": args.n, "guidance": args.guidance}
            try:
                got = fn(pipe, name, spacing, nfe, args.n, labels, args)
            except Exception as e:  # a scheduler that crashes is a result too (recorded, not fatal)
                row.update(fid=None, error=f"{type(e).__name__}: {e}"[:300])
                record(results, row, out)
                print(f"{lib:9s} {name:15s} {spacing:9s} failed: {row['error']}", flush=True)
                continue
            if got is None:
                continue
            x, used = got
            q = sample_quality(x, labels if pipe.num_classes else None, "mnist", args.n, seed=args.seed)
            row.update(nfe=used, fid=q["fid"], fid_floor=q["fid_floor"],
                       class_accuracy=q.get("class_accuracy"), seconds=time.perf_counter() - t0)
            record(results, row, out)
            print(f"{lib:9s} {name:15s} {spacing:9s} NFE {used:4d}  FID {q['fid']:8.3f} "
                  f"(floor {q['fid_floor']:.3f})  acc {row['class_accuracy']:.3f}  {row['seconds']:.0f}s",
                  flush=True)


def table(results: list[dict]) -> str:
    """Best spacing per sampler, FID at each NFE budget (markdown)."""
    failed = [r for r in results if r["fid"] is None]
    results = [r for r in results if r["fid"] is not None]
    if not results:
        return "no results yet"
    budgets = sorted({r["nfe_budget"] for r in results})
    best: dict[tuple, dict] = {}
    for r in results:
        key = (r["lib"], r["sampler"], r["nfe_budget"])
        if key not in best or r["fid"] < best[key]["fid"]:
            best[key] = r
    rows = sorted({(lib, s) for lib, s, _ in best})
    lines = ["| library | sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for lib, s in rows:
        cells = [f"{best[(lib, s, b)]['fid']:.2f} ({best[(lib, s, b)]['spacing']})" if (lib, s, b) in best
                 else "" for b in budgets]
        lines.append(f"| {lib} | {s} | " + " | ".join(cells) + " |")
    floor = sum(r["fid_floor"] for r in results) / len(results)
    lines.append(f"\nFID-style score of real digits (the floor at this n): {floor:.2f}; "
                 f"n = {results[0]['n']}, guidance {results[0]['guidance']}")
    crashes: dict[tuple, list] = {}
    for r in failed:
        crashes.setdefault((r["lib"], r["sampler"], r["spacing"], r["error"].split(":")[0]), []).append(r["nfe_budget"])
    lines += [f"failed: {lib} {name} ({spacing}) at NFE {', '.join(map(str, sorted(nfes)))}: {error}"
              for (lib, name, spacing, error), nfes in crashes.items()]
    return "\n".join(lines + spacing_table(results))


def spacing_table(results: list[dict]) -> list[str]:
    """Ours, every spacing run, FID at each budget: markdown rows, or nothing when each sampler
    ran one spacing."""
    ours = [r for r in results if r["lib"] == "undiffuse"]
    if all(len({r["spacing"] for r in ours if r["sampler"] == s}) < 2 for s in {r["sampler"] for r in ours}):
        return []
    budgets = sorted({r["nfe_budget"] for r in ours})
    fid = {(r["sampler"], r["spacing"], r["nfe_budget"]): r["fid"] for r in ours}
    lines = ["\nEvery spacing (ours):\n", "| sampler | spacing | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
             "|---|---|" + "---|" * len(budgets)]
    for name, spacing in sorted({(r["sampler"], r["spacing"]) for r in ours}):
        cells = [f"{fid[(name, spacing, b)]:.2f}" if (name, spacing, b) in fid else "" for b in budgets]
        mark = " (default)" if get_sampler(name).spacing == spacing else ""
        lines.append(f"| {name} | {spacing}{mark} | " + " | ".join(cells) + " |")
    return lines


def plot(results: list[dict], path: Path) -> None:
    """Two panels (undiffuse, diffusers), best spacing per sampler; the 1000-step DDPM score and
    the real-data floor as lines; scores above 100 (diverged) drawn at the top edge."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if r["fid"] is not None]
    if not results:
        return
    top = 100.0
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    curves: dict[tuple, dict[int, float]] = {}
    for r in results:
        if r["nfe_budget"] < 1000:
            curve = curves.setdefault((r["lib"], r["sampler"]), {})
            curve[r["nfe"]] = min(curve.get(r["nfe"], float("inf")), r["fid"])
    markers = "osD^v<>pP*Xh"
    for ax, lib in zip(axes, ("undiffuse", "diffusers")):
        names = sorted(name for lb, name in curves if lb == lib)
        for i, name in enumerate(names):
            curve = curves[(lib, name)]
            nfes = sorted(curve)
            ax.plot(nfes, [min(curve[k], top) for k in nfes], marker=markers[i % len(markers)],
                    color=plt.cm.tab20(i / max(len(names) - 1, 1)), label=name)
        for r in results:
            if r["nfe_budget"] >= 1000 and r["sampler"] in ("ddpm", "DDPM"):
                ax.axhline(r["fid"], color="gray", ls="--", lw=1, label=f"DDPM, {r['nfe']} steps")
        ax.axhline(sum(r["fid_floor"] for r in results) / len(results), color="k", lw=0.8,
                   label="real data (floor)")
        ax.set(xscale="log", yscale="log", ylim=(1, top * 1.1), xlabel="network evaluations (NFE)",
               title=f"{lib} (best schedule per sampler)")
        ax.legend(fontsize=7, ncol=2)
    axes[0].set_ylabel("FID-style score (MNIST feature net; >= 100 drawn at the top)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"written: {path}")


if __name__ == "__main__":
    main()
