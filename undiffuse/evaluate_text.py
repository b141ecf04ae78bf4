"""Evaluate a text-to-image model: prompt adherence and an FID-style score against the guidance scale.

For each guidance scale w, every evaluation prompt is sampled ``n_per_prompt`` times (seeded) and
the dataset's judge (``undiffuse.metrics.adherence``) checks every stated attribute. The result
holds, per scale and per prompt split ("seen" / "heldout" colour x shape pairs for shapes, "strokes"
/ "digit" for MNIST), the adherence and the per-attribute accuracies, plus the Fréchet distance of
all that scale's samples to real held-out images in the judge's feature space. Beside them: the
judge's own accuracy on real held-out images, and the real-data ceiling (real images scored against
prompts stating their attributes) and floor (the same distance between two real sets of that size).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .data.mnist_captions import mnist_prompts
from .data.shapes import shapes_prompts
from .metrics.adherence import get_judge
from .metrics.fid import fid_from_features

__all__ = ["default_prompts", "evaluate_text_model", "sample_prompts", "format_text_table", "TEXT_DATASETS"]

TEXT_DATASETS = ("shapes", "mnist")


def default_prompts(dataset: str, n: int = 64, seed: int = 0) -> dict[str, list]:
    """The evaluation prompt sets of a built-in captioned dataset, by split name."""
    if dataset == "shapes":
        return {"seen": shapes_prompts("seen", n, seed), "heldout": shapes_prompts("heldout", n, seed)}
    if dataset == "mnist":
        return {"strokes": mnist_prompts(n, seed), "digit": mnist_prompts(n, seed, strokes=False)}
    raise ValueError(f"no evaluation prompts for dataset {dataset!r}; text evaluation knows {', '.join(TEXT_DATASETS)}")


def sample_prompts(pipe, texts: Sequence[str], *, guidance: float, sampler: str = "ddim", steps: int = 50,
                   seed: int = 0, batch: int = 100, **options) -> Tensor:
    """One sample per entry of ``texts`` (a prompt repeated k times gives k samples), in batches, seeded
    per batch so the result does not depend on anything sampled before."""
    out = []
    for i in range(0, len(texts), batch):
        chunk = list(texts[i:i + batch])
        out.append(pipe.sample(len(chunk), prompts=chunk, guidance=guidance, sampler=sampler, steps=steps,
                               seed=seed + i, **options))
    return torch.cat(out).float().clamp(-1, 1)


def _dataset_of(pipe) -> str:
    """The run's training data, from its config.json (``dataset`` must be given for runs without one)."""
    run_dir = getattr(pipe, "run_dir", None)
    if run_dir is None or not (Path(run_dir) / "config.json").exists():
        raise ValueError("cannot tell which dataset this model was trained on; pass dataset='shapes' or 'mnist'")
    return json.loads((Path(run_dir) / "config.json").read_text())["train"]["data"]


def evaluate_text_model(pipe, prompts: dict[str, list] | None = None, guidance_scales: Sequence[float] = (1.0, 3.0),
                        n_per_prompt: int = 4, *, dataset: str | None = None, n_prompts: int = 64,
                        sampler: str = "ddim", steps: int = 50, seed: int = 0, fid: bool = True,
                        judge=None, cache_dir: str | Path | None = None, batch: int = 100,
                        keep_samples: bool = False, **options) -> dict:
    """Prompt adherence and the FID-style score of a text model for each guidance scale.

    ``prompts``: split name -> prompts (``ShapePrompt`` / ``DigitPrompt``); default
    ``default_prompts(dataset, n_prompts, seed)``. ``judge``: default ``get_judge(dataset, cache_dir)``.
    Returns a JSON-friendly dict (with ``samples`` tensors per scale when ``keep_samples``)::

        {"dataset", "judge": {heldout accuracies}, "real": {split: adherence of real images},
         "fid_floor", "scales": {"3.0": {"seen": {"adherence", "per_attribute", "n"}, ..., "fid"}}, ...}
    """
    if not getattr(pipe, "is_text", False):
        raise ValueError("this model is not text-conditional; `undiffuse eval` measures class and "
                         "unconditional models, this evaluation needs a model trained with --text")
    dataset = dataset or _dataset_of(pipe)
    prompts = prompts if prompts is not None else default_prompts(dataset, n_prompts, seed)
    judge = judge if judge is not None else get_judge(dataset, cache_dir)
    start = time.perf_counter()
    result = {"dataset": dataset, "sampler": sampler, "steps": steps, "n_per_prompt": n_per_prompt,
              "seed": seed, "judge": judge.info.get("heldout_accuracy"),
              "prompts": {k: len(v) for k, v in prompts.items()}, "scales": {}}
    n_total = n_per_prompt * sum(len(v) for v in prompts.values())
    real_x, real_prompts = judge.real_reference(2 * n_total if fid else n_total, seed=seed)
    result["real"] = _strip(judge.score(real_x[:n_total], real_prompts[:n_total]))
    if fid:
        ref = judge.features(real_x[n_total:])
        result["fid_floor"] = fid_from_features(judge.features(real_x[:n_total]), ref)
    samples: dict[str, Tensor] = {}
    for w in guidance_scales:
        entry, images = {}, []
        for split, items in prompts.items():
            expanded = [p for p in items for _ in range(n_per_prompt)]
            x = sample_prompts(pipe, [p.text for p in expanded], guidance=w, sampler=sampler, steps=steps,
                               seed=seed, batch=batch, **options)
            entry[split] = _strip(judge.score(x, expanded))
            images.append(x)
        if fid:
            entry["fid"] = fid_from_features(judge.features(torch.cat(images)), ref)
        result["scales"][f"{float(w):g}"] = entry
        if keep_samples:
            samples[f"{float(w):g}"] = torch.cat(images)
    result["seconds"] = time.perf_counter() - start
    if keep_samples:
        result["samples"] = samples
    return result


def _strip(score: dict) -> dict:
    """A judge's score without the per-image list (kept out of the JSON)."""
    return {k: v for k, v in score.items() if k != "correct"}


def format_text_table(result: dict) -> str:
    """Adherence per split and the FID-style score per guidance scale, as a Markdown table."""
    splits = list(result["prompts"])
    head = "| guidance w | " + " | ".join(f"adherence ({s})" for s in splits) + " | FID-style |"
    lines = [head, "|---" * (len(splits) + 2) + "|"]
    for w, entry in result["scales"].items():
        cells = [f"{entry[s]['adherence']:.3f}" for s in splits]
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {entry.get('fid', float('nan')):.4g} |")
    real = result["real"]["adherence"]
    lines.append(f"| real images | {real:.3f} (all) |" + " |" * (len(splits) - 1)
                 + f" {result.get('fid_floor', float('nan')):.4g} |")
    return "\n".join(lines)
