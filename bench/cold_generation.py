"""Generation from cold degradations beside the Gaussian DDPM of the same net and budget (the
``generate`` and ``prior-sweep`` phases of ``bench/cold_restoration.py``, which trains the runs):

    python bench/cold_restoration.py generate --root runs/cold-long [--models KEY ...]
    python bench/cold_restoration.py prior-sweep --runs pixelate --root runs/cold-long

A row of ``_generators`` is a run, a start (the degradation's own prior, or a Gaussian mixture over a
summary of fully degraded training digits) and a sampler; every row draws ``n`` digits, scored
against ``n`` held-out digits (FID-style beside its floor, precision, recall, classes present).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from cold_restoration import _feature_reference, _fid, _merge, splits, trained_steps

#: The pixelate prior's mixture size, chosen by ``prior-sweep`` (docs/cold_prior_sweep_pixelate.json: the best
#: FID-style against training digits that the fit did not see; the held-out digits play no part).
PIXELATE_COMPONENTS = 160


def _sample(pipe, n: int, batch: int = 200, **kw) -> torch.Tensor:
    return torch.cat([pipe.sample(min(batch, n - i), seed=i, bf16=True, **kw) for i in range(0, n, batch)])


def _mixture_pipeline(pipe, train_x: torch.Tensor, components: int = 10, standardize: bool | None = None,
                      **settings):
    """The run's restorer with a ``components``-Gaussian mixture prior over its degradation's summary
    of fully degraded training digits (``settings`` change the degradation's, e.g. blur's
    ``summary_modes=2``: the 25 lowest Fourier modes instead of the channel means; the maths of D
    does not change). ``standardize``: fit to unit-variance features (default: the degradation's
    ``summary_scales_differ``)."""
    from undiffuse.cold import ColdRestorer, GaussianMixturePrior, make_degradation
    from undiffuse.cold.pipeline import ColdPipeline

    r = pipe.restorer
    deg = make_degradation({**pipe.degradation.config(), **settings})
    prior = GaussianMixturePrior.fit(deg, train_x, n_components=components, seed=0,
                                     generator=torch.Generator().manual_seed(0), standardize=standardize)
    restorer = ColdRestorer(r.net, deg, residual=r.residual, standardize=r.standardize)
    return ColdPipeline(restorer, pipe.shape, pipe.num_classes, pipe.class_names, pipe.run_dir, prior=prior)


def _generators(train_x: torch.Tensor) -> dict[str, tuple[str, str, object]]:
    """key -> (row label, run, lambda pipe: (pipeline, sample settings)) of every generation row."""
    def blur_modes(sampler: str = "improved", noise_std: float = 0.0):
        """A blur run started from a 10-component mixture over the 25 lowest Fourier modes of x_T (10: the
        best of ``prior-sweep --runs blur-l2``, docs/cold_prior_sweep_blur-l2.json). "Scaled fit": fitted
        to features scaled to unit variance (session 9; rows without it are the unscaled fit's)."""
        return lambda p: (_mixture_pipeline(p, train_x, summary_modes=2), dict(sampler=sampler, noise_std=noise_std))

    return {
        "blur-paper": ("cold blur, Alg. 2, mean prior + noise 0.002 (paper; 20 NFE)", "blur",
                       lambda p: (p, dict(sampler="improved"))),
        "blur-modes": ("cold blur, Alg. 2, 25-mode prior (scaled fit), no noise (20 NFE)", "blur",
                       blur_modes()),
        "ddpm": ("DDPM, DPM-Solver++(2M) SDE, 20 steps (20 NFE)", "ddpm",
                 lambda p: (p, dict(sampler="dpmpp_2m_sde", num_inference_steps=20))),
        "blur-7k-modes": ("cold blur (7000 steps), Alg. 2, 25-mode prior (scaled fit), no noise (20 NFE)", "blur-7k",
                          blur_modes()),
        "blur-7k-modes-noise": ("cold blur (7000 steps), Alg. 2, 25-mode prior (scaled fit) + noise 0.002 (20 NFE)", "blur-7k",
                                blur_modes(noise_std=0.002)),
        "blur-7k-modes-direct": ("cold blur (7000 steps), direct R(x_T, T) from the 25-mode prior, scaled fit (1 NFE)", "blur-7k",
                                 blur_modes("direct")),
        "blur-l2-modes": ("cold blur, L2 (3500 steps), Alg. 2, 25-mode prior (scaled fit), no noise (20 NFE)", "blur-l2",
                          blur_modes()),
        "blur-l2-7k-modes": ("cold blur, L2 (7000 steps), Alg. 2, 25-mode prior (scaled fit), no noise (20 NFE)", "blur-l2-7k",
                             blur_modes()),
        "ddpm-7k": ("DDPM (7000 steps), DPM-Solver++(2M) SDE, 20 steps (20 NFE)", "ddpm-7k",
                    lambda p: (p, dict(sampler="dpmpp_2m_sde", num_inference_steps=20))),
        "ddpm-ddim50": ("DDPM, DDIM, 50 steps (50 NFE)", "ddpm",
                        lambda p: (p, dict(sampler="ddim", num_inference_steps=50))),
        "pixelate": ("cold pixelate, Alg. 2, block-mean prior (1 Gaussian, the run's) + noise 0.002 (3 NFE)",
                     "pixelate", lambda p: (p, dict(sampler="improved"))),
        "pixelate-mixture": ("cold pixelate, Alg. 2, 10-component block-mean mixture + noise 0.002 (3 NFE)",
                             "pixelate", lambda p: (_mixture_pipeline(p, train_x), dict(sampler="improved"))),
        "pixelate-mixture160": ("cold pixelate, Alg. 2, 160-component block-mean mixture (chosen by prior-sweep) "
                                "+ noise 0.002 (3 NFE)", "pixelate",
                                lambda p: (_mixture_pipeline(p, train_x, components=PIXELATE_COMPONENTS),
                                           dict(sampler="improved"))),
        "pixelate-mixture160-scaled": ("cold pixelate, Alg. 2, 160-component block-mean mixture fitted to "
                                       "unit-variance block means + noise 0.002 (3 NFE)", "pixelate",
                                       lambda p: (_mixture_pipeline(p, train_x, components=PIXELATE_COMPONENTS,
                                                                    standardize=True), dict(sampler="improved"))),
        "fade": ("animorphosis: a random photo patch (fade source) restored to a digit, Alg. 2 (20 NFE)", "fade",
                 lambda p: (p, dict(sampler="improved", num_inference_steps=20))),
        "fade-3k": ("animorphosis (3000 steps), a random photo patch restored to a digit, Alg. 2 (20 NFE)", "fade-3k",
                    lambda p: (p, dict(sampler="improved", num_inference_steps=20))),
    }


#: By the run's degradation: the summary of x_T its mixture is fitted to (blur: 25 Fourier modes),
#: the symmetry-breaking noise of its start, and the mixture sizes ``prior-sweep`` tries.
PRIOR_SETTINGS = {"blur": {"summary_modes": 2}, "pixelate": {}}
PRIOR_NOISE = {"blur": 0.0, "pixelate": 0.002}
SWEPT_COMPONENTS = {"blur": (1, 5, 10, 20, 40), "pixelate": (1, 10, 20, 40, 80, 160)}


def prior_sweep(root: Path, out: Path, run: str = "pixelate", n: int = 600) -> list[dict]:
    """Model selection for a generation prior without touching the held-out digits: mixtures of
    ``components`` Gaussians over the run's summary of x_T, fitted to the training digits but the last
    ``n``, scored (FID-style of ``n`` samples) against those last ``n``, which neither the fit nor the
    tables' held-out scores see. The first row restores real fully degraded training digits (the
    first ``n``) instead: what a perfect prior would give."""
    from undiffuse import load
    from undiffuse.metrics import extract_features, get_feature_net

    train_split, _ = splits("mnist")
    net, _ = get_feature_net("mnist")
    ref = extract_features(net, train_split.x[-n:])  # the last n training digits
    pipe = load(root / run)
    kind = pipe.degradation.name
    start = pipe.degrade(train_split.x[:n])
    x = torch.cat([pipe.restore(start[i:i + 200], sampler="improved", bf16=True) for i in range(0, n, 200)])
    rows = [{"run": run, "components": "real x_T", "n": n, "fid_vs_training": _fid(net, x.clamp(-1, 1), ref)}]
    print(json.dumps(rows[-1]), flush=True)
    for k in SWEPT_COMPONENTS[kind]:
        mixture = _mixture_pipeline(pipe, train_split.x[:-n], components=k, **PRIOR_SETTINGS[kind])
        x = _sample(mixture, n, sampler="improved", noise_std=PRIOR_NOISE[kind]).clamp(-1, 1)
        rows.append({"run": run, "components": k, "n": n, "fid_vs_training": _fid(net, x, ref)})
        print(json.dumps(rows[-1]), flush=True)
    out.write_text(json.dumps(rows, indent=1))
    return rows


def generate(root: Path, docs: Path, n: int = 600, keys: list[str] | None = None) -> list[dict]:
    """Unconditional digits from the cold runs (Gaussian-mixture or built-in start + Algorithm 2) and
    from the Gaussian DDPM of the same net and budget, scored against the held-out digits; rows of
    runs that have not finished training are skipped. The grid ``docs/cold_generation.png`` shows every row measured."""
    from safetensors.torch import load_file, save_file

    from undiffuse import load
    from undiffuse.metrics import class_statistics, extract_features, predict_labels, prdc
    from undiffuse.viz import save_labelled_grid

    train_split, held = splits("mnist")
    net, ref, floor = _feature_reference("mnist", held, n)
    generators = _generators(train_split.x)
    rows, shown = [], root / "generation"
    for key in keys or list(generators):
        label, run, make = generators[key]
        if not (root / run / "done").exists():  # rows name their budget: a run still training would lie
            print(f"skipping {key}: {root / run} has not finished training", flush=True)
            continue
        pipe, kw = make(load(root / run))
        x = _sample(pipe, n, **kw).clamp(-1, 1)
        feats = extract_features(net, x)
        pr = prdc(ref, feats)
        classes = class_statistics(predict_labels(net, x), 10, held.labels[:n])
        row = {"model": label, "key": key, "n": n, "fid": _fid(net, x, ref), "fid_floor": floor,
               "train_steps": trained_steps(root / run), "precision": pr["precision"], "recall": pr["recall"],
               "classes_present": classes["num_present_thresholded"], "class_kl": classes["kl"]}
        rows.append(row)
        shown.mkdir(parents=True, exist_ok=True)
        save_file({"x": x[:12].contiguous()}, str(shown / f"{key}.safetensors"))
        print(json.dumps(row), flush=True)
        _merge(docs / "cold_generation.json", [row], key=("model",))  # row by row: an interrupted run keeps what it measured
    have = [k for k in generators if (shown / f"{k}.safetensors").exists()]
    save_labelled_grid([load_file(str(shown / f"{k}.safetensors"))["x"] for k in have], docs / "cold_generation.png",
                       row_labels=[generators[k][0] for k in have])
    return rows
