"""`undiffuse eval`: every measurement of a trained run in one table, written as JSON beside it.

Sample quality is measured in the feature space of a classifier that undiffuse trains on the real
data (Inception weights cannot be downloaded here): FID-style Fréchet distance, KID, precision /
recall / density / coverage, and class statistics. Each distance is printed beside its real-data
floor, the same metric between two disjoint halves of the real data at the same sample size.

Under torchrun (``torchrun --nproc_per_node N -m undiffuse eval ...``) the sampling, which is most
of the time, is sharded over the processes by batch and gathered, each batch seeded as in one
process: the samples, hence every number, equal a single-process evaluation's (on the CPU,
bitwise; tested). Rank 0 then computes the metrics, bits/dim and plots, and writes eval.json.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import distributed
from .checkpoint import write_json
from .checks import check_count
from .pictures import save_sampling_trajectory
from .data import TensorData, load_dataset
from .metrics import (class_statistics, extract_features, fid_from_features, get_feature_net, kid,
                      prdc, predict_labels, quantize_8bit, vlb_bits_per_dim)
from .api import load
from .pipeline import Pipeline
from .processes import DDPM
from .run_files import read_run_config
from .sampling import SampleSpec

FEATURE_DATASETS = ("mnist", "digits")


def _sample(pipe: Pipeline, n: int, spec: SampleSpec, batch: int = 100
            ) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """n samples (balanced classes for conditional models), on the CPU, and the images/s it took.

    Batch ``i`` is drawn with seed ``spec.seed + i`` wherever it runs: this process's share of the
    batches (all of them outside torchrun), gathered from every rank in order."""
    labels = torch.arange(n) % pipe.num_classes if pipe.takes_labels else None
    t0 = time.perf_counter()
    samples = distributed.gather_batches(n, batch, lambda i, size: pipe.sample(size, spec.replace(
        seed=spec.seed + i, class_labels=None if labels is None else labels[i:i + size])), pipe.shape)
    return samples, labels, n / (time.perf_counter() - t0)


def sample_quality(samples: torch.Tensor, requested: torch.Tensor | None, dataset: str,
                   n: int, seed: int = 0) -> dict:
    """Feature-space metrics of ``samples`` against real data, each with its real-data floor."""
    if dataset not in FEATURE_DATASETS:
        raise ValueError(f"feature-space metrics need a built-in dataset with a feature network "
                         f"({', '.join(FEATURE_DATASETS)}), not {dataset!r}")
    net, info = get_feature_net(dataset)
    data = load_dataset(dataset)
    if 2 * n > len(data):
        raise ValueError(f"--n {n} is too large for {dataset}: the real-data floor needs two "
                         f"disjoint real sets of n; use --n <= {len(data) // 2}")
    real_a, real_b = data.split(0.5, seed=seed)
    ref = extract_features(net, real_b.x[:n])
    floor_feats = extract_features(net, real_a.x[:n])
    fake = extract_features(net, samples.clamp(-1, 1))
    # Subsets of half the set, so the standard error reflects resampling (subsets of the whole
    # set would all be identical and report a spurious 0).
    subset = min(1000, n // 2)
    kid_fake = kid(fake, ref, subset_size=subset, seed=seed)
    kid_floor = kid(floor_feats, ref, subset_size=subset, seed=seed)
    pred = predict_labels(net, samples.clamp(-1, 1))
    result = {
        "feature_net": {"dataset": dataset, "heldout_accuracy": info["heldout_accuracy"]},
        "fid": fid_from_features(fake, ref), "fid_floor": fid_from_features(floor_feats, ref),
        "kid": kid_fake[0], "kid_stderr": kid_fake[1], "kid_floor": kid_floor[0],
        **{k: v for k, v in prdc(ref, fake).items()},
        **{f"{k}_floor": v for k, v in prdc(ref, floor_feats).items()},
        "classes": class_statistics(pred, data.num_classes, data_labels=data.labels),
    }
    if requested is not None:
        result["class_accuracy"] = (pred == requested).float().mean().item()
    return result


def evaluate(run_dir: str | Path, *, n: int = 2000, spec: SampleSpec | None = None, nll_images: int = 100,
             nll_steps: int = 100, plots: bool = True, standard_fid: bool = False,
             inception_weights: str | None = None, batch: int = 100, device: str | torch.device = "cpu",
             **settings) -> dict:
    """Measure a run's samples drawn as ``spec`` says (``settings``: ``SampleSpec`` fields that change
    it; default ddim in 50 steps); writes ``eval.json`` (and plots under ``eval/``) in the run directory.

    Sampling runs on ``device`` ("auto": CUDA when present; under torchrun each process its own
    GPU), ``batch`` images at a time. In a process group the other ranks return after sampling
    with only the sampling entries; rank 0 returns (and writes) everything."""
    spec = SampleSpec.build(spec, **settings)
    check_count(n, "n")  # before _sample's labels need n
    seed = spec.seed
    run_dir = Path(run_dir)
    pipe = load(run_dir)
    pipe.denoiser.to(distributed.resolve_device(device) if isinstance(device, str) else device)
    dataset = read_run_config(run_dir)["train"]["data"]
    samples, requested, rate = _sample(pipe, n, spec, batch)
    pipe.denoiser.cpu()  # the metrics, the bound and the plots below are computed on the CPU
    result = {"run": str(run_dir), "n": n, "sampler": spec.sampler, "steps": spec.num_inference_steps,
              "spacing": spec.spacing, "guidance": spec.guidance, "bf16": spec.bf16, "sampling_images_per_s": rate,
              "processes": distributed.world_size()}
    if not distributed.is_main():
        return result
    result.update(sample_quality(samples, requested, dataset, n, seed))
    held_out = load_dataset(dataset).split(0.5, seed=seed)[1]  # the reference set above
    if standard_fid or inception_weights:
        from .metrics import standard_fid as fid_inception

        result["standard_fid"] = fid_inception(samples, held_out.x[:n], inception_weights)
    if _pixel_ddpm(pipe) and nll_images > 0:
        real = quantize_8bit(held_out.x[:nll_images])
        gen = torch.Generator().manual_seed(seed)
        vlb = vlb_bits_per_dim(pipe.denoiser, real, cond=pipe.conditioning.condition(SampleSpec(), len(real)),
                               steps=nll_steps, generator=gen)
        result["bits_per_dim_vlb"] = float(vlb["bpd_mean"])
        result["bits_per_dim_vlb_stderr"] = float(vlb["bpd_stderr"])
    if plots:
        plots_written = write_plots(pipe, run_dir, samples, held_out, seed)
        result["plots"] = {k: str(v) for k, v in plots_written.items()}
    write_json(run_dir / "eval.json", result)
    return result


def _pixel_ddpm(pipe: Pipeline) -> bool:
    """Whether the DDPM likelihood bounds apply: a DDPM on pixels (a latent run's would be on latents)."""
    return isinstance(pipe.process, DDPM) and pipe.denoised_shape == pipe.shape


def write_plots(pipe: Pipeline, run_dir: Path, samples: torch.Tensor, held_out: TensorData,
                seed: int) -> dict[str, Path]:
    from .metrics import plot_rate_distortion, rate_distortion
    from .viz import plot_loss_curve, save_grid

    out = run_dir / "eval"
    paths = {"samples": save_grid(samples[:100], out / "samples.png", nrow=pipe.num_classes or None)}
    if (run_dir / "log.jsonl").is_file():  # a run imported from diffusers has no training log
        paths["loss"] = plot_loss_curve(run_dir / "log.jsonl", out / "loss.png")
    paths["trajectory"] = save_sampling_trajectory(pipe, out / "trajectory.png", seed=seed)
    if _pixel_ddpm(pipe):
        real = quantize_8bit(held_out.x[:64])
        rd = rate_distortion(pipe.denoiser, real, cond=pipe.conditioning.condition(SampleSpec(), len(real)), steps=100,
                             generator=torch.Generator().manual_seed(seed))
        for i, path in enumerate(plot_rate_distortion(rd, out / "rate_distortion.png")):
            paths[f"rate_distortion_{i}"] = path
    return paths


def format_table(result: dict) -> str:
    """The eval result as a Markdown table: metric, value, real-data floor."""
    rows = [("FID (feature net)", result["fid"], result["fid_floor"]),
            ("KID (± standard error)", f"{result['kid']:.4g} ± {result['kid_stderr']:.2g}",
             result["kid_floor"]),
            ("precision", result["precision"], result["precision_floor"]),
            ("recall", result["recall"], result["recall_floor"]),
            ("density", result["density"], result["density_floor"]),
            ("coverage", result["coverage"], result["coverage_floor"]),
            ("classes present", result["classes"]["num_present"], None),
            ("class KL (nats)", result["classes"]["kl"], None)]
    if "standard_fid" in result:
        rows.insert(0, ("standard FID (Inception, torchmetrics)", result["standard_fid"], None))
    if "class_accuracy" in result:
        rows.append(("class accuracy (requested digit)", result["class_accuracy"], None))
    if "bits_per_dim_vlb" in result:
        rows.append(("bits/dim (DDPM bound)", result["bits_per_dim_vlb"], None))
    rows.append(("sampling images/s", result["sampling_images_per_s"], None))
    lines = ["| metric | value | real-data floor |", "|---|---|---|"]
    for name, value, floor in rows:
        fmt = (lambda v: f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append(f"| {name} | {fmt(value)} | {'' if floor is None else fmt(floor)} |")
    return "\n".join(lines)
