"""Evaluate a text-to-image model: prompt adherence and an FID-style score against the guidance scale.

For each guidance scale w, every evaluation prompt is sampled ``n_per_prompt`` times (seeded) and
the dataset's judge (``undiffuse.metrics.adherence``) checks every stated attribute. The result
holds, per scale and per prompt split ("seen" / "heldout" colour x shape pairs for shapes, "strokes"
/ "digit" for MNIST), the adherence and the per-attribute accuracies, plus the Fréchet distance, in
the judge's feature space, of all that scale's samples to real images of the same prompts
(``judge.real_for``: shapes rendered as stated, held-out digits with the stated attributes). Beside
them: the judge's own accuracy on real held-out images, the real-data ceiling (those real images
scored against their prompts) and floor (the same distance from a second, independent real draw).

Under torchrun the sampling is sharded over the processes by batch and gathered (each batch seeded
as in one process, so the result equals a single-process evaluation's); every rank then scores the
gathered samples, which is cheap beside sampling.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from .. import distributed
from ..data.mnist_captions import mnist_prompts
from ..data.shapes import shapes_prompts
from ..metrics.adherence import get_judge
from ..metrics.fid import fid_from_features
from ..sampling import SampleSpec

__all__ = ["default_prompts", "evaluate_text_model", "sample_prompts", "format_text_table", "TEXT_DATASETS"]

TEXT_DATASETS = ("shapes", "mnist")


def default_prompts(dataset: str, n: int = 64, seed: int = 0) -> dict[str, list]:
    """The evaluation prompt sets of a built-in captioned dataset, by split name."""
    if dataset == "shapes":
        return {"seen": shapes_prompts("seen", n, seed), "heldout": shapes_prompts("heldout", n, seed)}
    if dataset == "mnist":
        return {"strokes": mnist_prompts(n, seed), "digit": mnist_prompts(n, seed, strokes=False)}
    raise ValueError(f"no evaluation prompts for dataset {dataset!r}; text evaluation knows {', '.join(TEXT_DATASETS)}")


def sample_prompts(pipe, texts: Sequence[str], spec: SampleSpec, batch: int = 100) -> Tensor:
    """One sample per entry of ``texts`` (a prompt repeated k times gives k samples), on the CPU, in
    batches seeded by their position, so the result does not depend on anything sampled before nor
    on how many processes share the batches (``distributed.shard_batches``). Inside a process group
    every rank must call it: the batches are gathered from all of them."""
    return distributed.gather_batches(len(texts), batch, lambda i, size: pipe.sample(
        size, spec.replace(prompts=list(texts[i:i + size]), seed=spec.seed + i)).float(), pipe.shape).clamp(-1, 1)


def _dataset_of(pipe) -> str:
    """The run's training data, from its config.json (``dataset`` must be given for runs without one)."""
    run_dir = getattr(pipe, "run_dir", None)
    if run_dir is None or not (Path(run_dir) / "config.json").exists():
        raise ValueError("cannot tell which dataset this model was trained on; pass dataset='shapes' or 'mnist'")
    return json.loads((Path(run_dir) / "config.json").read_text())["train"]["data"]


def evaluate_text_model(pipe, prompts: dict[str, list] | None = None, guidance_scales: Sequence[float] = (1.0, 3.0),
                        n_per_prompt: int = 4, *, dataset: str | None = None, n_prompts: int = 64,
                        spec: SampleSpec | None = None, fid: bool = True, judge=None,
                        cache_dir: str | Path | None = None, batch: int = 100, keep_samples: bool = False,
                        **settings) -> dict:
    """Prompt adherence and the FID-style score of a text model for each guidance scale, the samples
    drawn as ``spec`` says (``settings``: ``SampleSpec`` fields that change it; default ddim, 50 steps).

    ``prompts``: split name -> prompts (``ShapePrompt`` / ``DigitPrompt``); default
    ``default_prompts(dataset, n_prompts, seed)``. ``judge``: default ``get_judge(dataset, cache_dir)``.
    Returns a JSON-friendly dict (with ``samples`` tensors per scale when ``keep_samples``)::

        {"dataset", "judge": {heldout accuracies}, "real": {adherence of real images of the prompts},
         "fid_floor", "scales": {"3.0": {"seen": {"adherence", "per_attribute", "n"}, ..., "fid"}}, ...}
    """
    spec = SampleSpec.build(spec, **settings)
    seed = spec.seed
    if not pipe.takes_prompts:
        raise ValueError("this model is not text-conditional; `undiffuse eval` measures class and "
                         "unconditional models, this evaluation needs a model trained with --text")
    dataset = dataset or _dataset_of(pipe)
    prompts = prompts if prompts is not None else default_prompts(dataset, n_prompts, seed)
    if judge is None:
        with distributed.main_first():  # a judge not cached yet is trained once, by rank 0
            judge = get_judge(dataset, cache_dir)
    start = time.perf_counter()
    result = {"dataset": dataset, "sampler": spec.sampler, "steps": spec.num_inference_steps, "n_per_prompt": n_per_prompt,
              "seed": seed, "judge": judge.info.get("heldout_accuracy"),
              "prompts": {k: len(v) for k, v in prompts.items()}, "scales": {}}
    expanded = {split: [p for p in items for _ in range(n_per_prompt)] for split, items in prompts.items()}
    everything = [p for items in expanded.values() for p in items]
    # The references are real images of exactly these prompts (``judge.real_for``), so the FID-style
    # score is prompt-matched, as FID on COCO captions compares with the captions' own photos.
    # Against random real images the prompt set's own distribution would count as an error: real
    # renders of the shapes prompts score 1079 there, above a model that ignores positions (docs/text.md).
    real_x = judge.real_for(everything, 0, seed)
    result["real"] = _entry(judge.score(real_x, everything), everything)
    if fid:
        ref = judge.features(real_x)
        result["fid_floor"] = fid_from_features(judge.features(judge.real_for(everything, 1, seed)), ref)
    samples: dict[str, Tensor] = {}
    for w in guidance_scales:
        entry, images = {}, []
        for split, items in expanded.items():
            x = sample_prompts(pipe, [p.text for p in items], spec.replace(guidance=w), batch)
            entry[split] = _entry(judge.score(x, items), items)
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


def _entry(score: dict, prompts: Sequence) -> dict:
    """A judge's score without the per-image list (kept out of the JSON), plus, for prompts that
    state several objects, the adherence by number of objects (``by_objects``: {"1": ..., "2": ...})."""
    out = {k: v for k, v in score.items() if k != "correct"}
    if prompts and hasattr(prompts[0], "objects"):
        by: dict[str, list[bool]] = {}
        for ok, p in zip(score["correct"], prompts):
            by.setdefault(str(len(p.objects)), []).append(ok)
        out["by_objects"] = {k: sum(v) / len(v) for k, v in sorted(by.items())}
    return out


def format_text_table(result: dict) -> str:
    """Adherence per split (and by number of objects, where prompts state several) and the
    FID-style score per guidance scale, as a Markdown table."""
    splits = list(result["prompts"])
    first = next(iter(result["scales"].values()), {})
    counts = {s: list(first.get(s, {}).get("by_objects", {})) for s in splits}
    names = [f"adherence ({s})" + (f" [{' / '.join(k + ' obj' for k in counts[s])}]" if counts[s] else "")
             for s in splits]
    lines = ["| guidance w | " + " | ".join(names) + " | FID-style |", "|---" * (len(splits) + 2) + "|"]
    for w, entry in result["scales"].items():
        cells = []
        for s in splits:
            by = entry[s].get("by_objects", {})
            cells.append(f"{entry[s]['adherence']:.3f}" + (f" [{' / '.join(f'{by[k]:.3f}' for k in counts[s])}]"
                                                          if counts[s] else ""))
        lines.append(f"| {w} | " + " | ".join(cells) + f" | {entry.get('fid', float('nan')):.4g} |")
    real = result["real"]["adherence"]
    lines.append(f"| real images | {real:.3f} (all) |" + " |" * (len(splits) - 1)
                 + f" {result.get('fid_floor', float('nan')):.4g} |")
    return "\n".join(lines)
