"""Which step schedule ("spacing") each sampler should default to, measured against exact answers.

    python bench/spacing_defaults.py                       # DDPM linear and cosine, EDM; 5-50 steps
    python bench/spacing_defaults.py --plot-only           # reprint the tables from the JSON
    python bench/spacing_defaults.py --processes ddpm:linear --samplers dpmpp_2m dpmpp_3m \
        --no-lower-order-final --out docs/spacing_no_lower_order_final.json

The data is ``undiffuse.testing.exact.sharp_mixture()`` (16 dimensions, 8 components of std
0.03-0.3), the denoiser its exact oracle, so every number is the sampler's own error:

* every sampler: mean log p(samples) minus the mixture's E_p[log p] (nats, --n-sde samples, standard
  error ~0.2): positive means too concentrated (the x0_hat of a last step from a high noise level
  sits nearer the component means than the data does), negative blurred or misplaced;
* deterministic samplers also: the RMS distance (over --n-ode points) to the exact
  probability-flow ODE solution from the same prior draws (scipy DOP853, tol 1e-10), the same RMS
  over the points that land on the same component as the exact solution, and the percentage
  that do not ("flips", each ~5.6 away, which dominate the RMS from 20 steps on).

For each sampler the spacing with the smallest mean |gap| excess over the best spacing at 10, 20
and 50 steps (over the processes run) is printed as "best"; ``SamplerInfo.spacing`` is the default
(docs/samplers.md, "Default schedules"). Results are appended to --out as they finish; a rerun
skips what is there.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from sweeps import add_common, record, sweep_main
from undiffuse.processes import make_process
from undiffuse.samplers import SAMPLERS, SPACINGS, timesteps
from undiffuse.testing.exact import (flip_fraction, likelihood_gap, mean_excess, mixture_log_likelihood, ode_endpoints,
                                     sharp_mixture)

CHOOSE_AT = (10, 20, 50)   # the step counts the choice is made on
# identical samplers (ddim = euler, ddpm = euler_ancestral: tests/test_samplers_ode.py) run once
SAME_AS = {"euler": "ddim", "euler_ancestral": "ddpm"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", nargs="+", default=["ddpm:linear", "ddpm:cosine", "edm"])
    p.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--samplers", nargs="+",
                   default=[s for s in SAMPLERS if s != "reference" and s not in SAME_AS])
    p.add_argument("--n-ode", type=int, default=1024, help="points per ODE error")
    p.add_argument("--n-sde", type=int, default=2000, help="samples per likelihood gap")
    p.add_argument("--no-lower-order-final", action="store_true",
                   help="DPM-Solver++ without its lower-order final steps (use another --out)")
    add_common(p, "docs/spacing_defaults.json")
    sweep_main(p, run, table, lambda results, path: None)


def run(args, results: list[dict], out: Path) -> None:
    gmm = sharp_mixture()
    reference = mixture_log_likelihood(gmm)
    done = {(r["process"], r["sampler"], r["spacing"], r["steps"]) for r in results}
    for proc in args.processes:
        process = make_process(proc)
        for name in args.samplers:
            info = SAMPLERS[name]
            options = {"lower_order_final": False} if args.no_lower_order_final and name.startswith("dpmpp") else {}
            for spacing in SPACINGS:
                for steps in args.steps:
                    if (proc, name, spacing, steps) in done:
                        continue
                    row = {"process": proc, "sampler": name, "spacing": spacing, "steps": steps, **options}
                    t0 = time.perf_counter()
                    try:
                        ts = timesteps(process, steps, spacing)
                    except ValueError as e:     # 'leading' on a continuous process
                        row.update(value=None, error=str(e)[:200])
                        record(results, row, out)
                        continue
                    gap, se = likelihood_gap(info, process, gmm, ts, reference, n=args.n_sde, seed=args.seed, **options)
                    row.update(value=gap, stderr=se)
                    if not info.stochastic:
                        row.update(_ode_numbers(info, process, gmm, ts, args.n_ode, args.seed, options))
                    row["seconds"] = time.perf_counter() - t0
                    record(results, row, out)
                    print(f"{proc:12s} {name:15s} {spacing:9s} {steps:3d}  {row['value']:9.3f}", flush=True)


def _ode_numbers(info, process, gmm, ts, n: int, seed: int, options: dict) -> dict:
    got, want = ode_endpoints(info, process, gmm, ts, n=n, seed=seed, **options)
    dist = (got - want).norm(dim=1)
    flips = gmm.responsibilities(got).argmax(1) != gmm.responsibilities(want).argmax(1)
    return {"ode_rms": float(dist.pow(2).mean().sqrt()), "ode_rms_kept": float(dist[~flips].pow(2).mean().sqrt()),
            "flips": flip_fraction(gmm, got, want)}


def _badness(row: dict) -> float:
    v = row["value"]
    return math.inf if v is None or not math.isfinite(v) else abs(v)


def best_spacings(results: list[dict]) -> dict[str, tuple[str, dict[str, float]]]:
    """Per sampler: the spacing with the smallest mean excess |gap| - best |gap| (nats) at CHOOSE_AT
    steps over the processes run, and the mean excess of every spacing run on all of them."""
    cells: dict[str, dict[tuple, dict[str, float]]] = {}
    for r in results:
        if r["steps"] in CHOOSE_AT and r.get("value") is not None:
            cells.setdefault(r["sampler"], {}).setdefault((r["process"], r["steps"]), {})[r["spacing"]] = _badness(r)
    out = {}
    for name, by_case in cells.items():
        means = mean_excess(by_case)
        out[name] = (min(means, key=means.get), means)
    return out


def _rows(results: list[dict], proc: str, cell) -> list[str]:
    """One markdown row per (sampler, spacing) of ``proc`` with a cell per step count."""
    steps = sorted({r["steps"] for r in results})
    lines = ["| sampler | spacing | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for name in dict.fromkeys(r["sampler"] for r in results):
        for spacing in SPACINGS:
            got = {r["steps"]: r for r in results if (r["process"], r["sampler"], r["spacing"]) == (proc, name, spacing)}
            if got:
                mark = " (default)" if SAMPLERS[name].spacing == spacing else ""
                lines.append(f"| {name} | {spacing}{mark} | " + " | ".join(cell(got[s]) if s in got else "" for s in steps) + " |")
    return lines


def _gap_cell(row: dict) -> str:
    return "inf" if not math.isfinite(row["value"]) else f"{row['value']:+.2f}"


def _ode_cell(row: dict) -> str:
    return f"{row['ode_rms']:.3f} / {row['ode_rms_kept']:.3f} / {100 * row['flips']:.1f} %"


def table(results: list[dict]) -> str:
    results = [r for r in results if r.get("value") is not None]
    if not results:
        return "no results yet"
    lines = []
    for proc in sorted({r["process"] for r in results}):
        lines += [f"\n### {proc}: mean log p(samples) - E_p[log p] (nats)\n"] + _rows(results, proc, _gap_cell)
        ode = [r for r in results if r["process"] == proc and "ode_rms" in r]
        if ode:
            lines += [f"\n### {proc}: ODE error, RMS / RMS without flips / flips\n"] + _rows(ode, proc, _ode_cell)
    lines += ["\nMean excess |gap| - best |gap| (nats) at " + ", ".join(map(str, CHOOSE_AT)) + " steps:\n",
              "| sampler | default | best | " + " | ".join(SPACINGS) + " |", "|---|---|---|" + "---|" * len(SPACINGS)]
    for name, (choice, means) in best_spacings(results).items():
        cells = [f"{means[s]:.2f}" if s in means and math.isfinite(means[s]) else "-" for s in SPACINGS]
        lines.append(f"| {name} | {SAMPLERS[name].spacing} | {choice} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
