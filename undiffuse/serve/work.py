"""What a job does: draw samples step by step (every step's x_t and predicted x0 sent to the page),
or a cold run's degradation ladder and restorations. Pictures are PNG bytes made in memory with the
same functions that write the run's pictures (``viz``, ``pictures``): nothing is written to disk.
"""
from __future__ import annotations

import base64

import torch
from torch import Tensor

from ..pictures import restoration_rows, trajectory_columns
from ..sampling import SampleSpec
from ..viz import grid_pixels, labelled_grid_pixels, png_bytes, trajectory_pixels
from .jobs import Job

#: Severities shown in the ladder at most (evenly spaced, 0 and T included).
LADDER_COLUMNS = 11


def png(images: Tensor) -> bytes:
    """A batch as the grid the page shows (and ``viz.save_grid`` writes)."""
    return png_bytes(grid_pixels(images))


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def expected_steps(pipe, spec: SampleSpec) -> int:
    """How many sampler steps the progress bar counts to (the callbacks a draw makes)."""
    if pipe.can_restore:  # cold: one step per severity visited
        return len(pipe.severities(spec.num_inference_steps)) - 1
    from ..pipeline import DEFAULT_STEPS

    return spec.num_inference_steps or DEFAULT_STEPS


def sample_job(pipe, draws: list[tuple[int, SampleSpec]]):
    """A job drawing each (n, spec) of ``draws`` in turn (two: the page's side-by-side comparison),
    as panel 0, 1, ...; results ``grid-P`` and ``trajectory-P``."""

    def work(job: Job) -> None:
        for panel, (n, spec) in enumerate(draws):
            total, count = expected_steps(pipe, spec), [0]

            def step(d: dict) -> None:
                job.check_cancelled()
                count[0] += 1
                job.emit({"type": "step", "panel": panel, "i": count[0], "total": max(total, count[0]),
                          "t": float(d["t"]), "x_t": data_url(png(d["x"].float())),
                          "x0": data_url(png(d["x0_hat"].float()))})

            job.emit({"type": "panel", "panel": panel, "spec": spec.to_dict(), "n": n, "total": total})
            res = pipe.sample(n, spec, trajectory=True, callback=step)
            job.results[f"grid-{panel}"] = png(res.x0)
            xs, x0_hats, ts = trajectory_columns(res)
            job.results[f"trajectory-{panel}"] = png_bytes(trajectory_pixels(xs, x0_hats, ts))
            job.emit({"type": "result", "panel": panel, "image": data_url(job.results[f"grid-{panel}"]),
                      "grid": f"/api/jobs/{job.id}/grid-{panel}.png",
                      "trajectory": f"/api/jobs/{job.id}/trajectory-{panel}.png"})

    return work


def restore_job(pipe, image: Tensor, t: int | None, steps: int | None, seed: int):
    """A job drawing a cold run's ladder D(x0, t) of ``image`` and its restoration from severity ``t``
    with Algorithm 1, Algorithm 2 and direct (``pictures.restoration_rows``); results ``ladder-0``
    and ``restoration-0``."""

    def work(job: Job) -> None:
        deg = pipe.degradation
        job.emit({"type": "panel", "panel": 0, "total": 2})
        with torch.no_grad():
            ts, frames = deg.ladder(image, min(LADDER_COLUMNS, deg.num_steps + 1),
                                    generator=torch.Generator().manual_seed(seed))
        job.results["ladder-0"] = png_bytes(labelled_grid_pixels([frames[:, 0]], ["D(x0, t)"],
                                                                 [f"t={s}" for s in ts]))
        job.emit({"type": "step", "panel": 0, "i": 1, "total": 2})
        job.check_cancelled()
        rows, labels = restoration_rows(pipe, image, t, seed=seed, num_inference_steps=steps)
        # One image: the strip's rows (x0, D(x0, t), Alg. 1, Alg. 2, direct) side by side, labelled above.
        job.results["restoration-0"] = png_bytes(labelled_grid_pixels([torch.cat(rows)], None, labels))
        job.emit({"type": "restored", "panel": 0, "ladder": data_url(job.results["ladder-0"]),
                  "restoration": data_url(job.results["restoration-0"]),
                  "labels": labels, "download": f"/api/jobs/{job.id}/restoration-0.png"})

    return work
