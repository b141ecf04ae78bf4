"""The pictures that explain a trained model, drawn through its pipeline (which only loads and
samples): the denoising trajectory of any run, and the restoration strip of a cold run.

    from undiffuse.pictures import save_sampling_trajectory, save_restoration_strip
    save_sampling_trajectory(pipe, "trajectory.png", guidance=2.0)
    save_restoration_strip(cold_pipe, images, "strip.png")
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .pipeline import SampleResult
from .sampling import SampleSpec
from .viz import save_labelled_grid, save_trajectory


def save_sampling_trajectory(pipe, path: str | Path, n: int = 10, *, columns: int = 10,
                             spec: SampleSpec | None = None, **settings) -> Path:
    """The picture that explains diffusion: for n images, x_t and the predicted x0 at ``columns``
    evenly spaced steps, ending with the sample. Unless the spec gives labels, a class-conditional
    model draws one class per row (n <= classes); a text model one row per prompt of the spec."""
    spec = SampleSpec.build(spec, **settings)
    if pipe.takes_prompts:
        if spec.prompts is None:
            spec = spec.replace(guidance=1.0)
        elif not isinstance(spec.prompts, str):
            n = len(spec.prompts)
    elif spec.class_labels is None:
        labels = tuple(range(n)) if pipe.takes_labels and n <= pipe.num_classes else None
        spec = spec.replace(class_labels=labels) if labels else spec.replace(guidance=1.0)
    xs, x0_hats, ts = trajectory_columns(pipe.sample(n, spec, trajectory=True), columns)
    return save_trajectory(xs, x0_hats, path, ts=ts)


def trajectory_columns(res: SampleResult, columns: int = 10) -> tuple[list[Tensor], list[Tensor], list[float]]:
    """x_t, predicted x0 and t at ``columns`` evenly spaced steps of a sampled trajectory, then the
    sample itself (t = 0): what the trajectory picture shows (``viz.save_trajectory``)."""
    keep = sorted({round(i * (len(res.xs) - 1) / (columns - 1)) for i in range(columns)})
    return ([res.xs[i] for i in keep] + [res.x0], [res.x0_hats[i] for i in keep] + [res.x0],
            [res.ts[i] for i in keep] + [0.0])


def save_restoration_strip(pipe, images: Tensor, path: str | Path, t: int | None = None, *, seed: int = 0,
                           num_inference_steps: int | None = None) -> Path:
    """A cold run's restoration strip: rows x0, D(x0, t), Algorithm 1, Algorithm 2, direct (null class
    for conditional models; random degradations draw their state from ``seed``)."""
    rows, labels = restoration_rows(pipe, images, t, seed=seed, num_inference_steps=num_inference_steps)
    return save_labelled_grid(rows, path, labels)


def restoration_rows(pipe, images: Tensor, t: int | None = None, *, seed: int = 0,
                     num_inference_steps: int | None = None) -> tuple[list[Tensor], list[str]]:
    """The rows of the restoration strip and their labels (``save_restoration_strip``)."""
    deg = pipe.degradation
    t = deg.num_steps if t is None else int(t)
    state = deg.sample_state(images.shape, torch.Generator().manual_seed(seed))
    x_t = pipe.degrade(images, t, state=state)
    rows = [images.float(), x_t] + [pipe.restore(x_t, t, name, num_inference_steps=num_inference_steps, state=state)
                                    for name in ("naive", "improved", "direct")]
    return rows, ["x0", f"D(x0, {t})", "Alg. 1", "Alg. 2", "direct"]
