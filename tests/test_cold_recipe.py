"""The cold restorer's recipe options (standardized input, severity weighting, the generation prior's
fit and size), the class-agreement metric, and the iterative-denoising loop checked with the exact
Gaussian-mixture denoiser."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from undiffuse.config import TrainConfig
from undiffuse.metrics import class_agreement
from undiffuse.cold.degradations import make_degradation
from undiffuse.cold.prior import GaussianMixturePrior
from undiffuse.cold.restorer import STANDARDIZE_EPS, standardized_input
from undiffuse.cold.iterative import iterative_denoise, iterative_levels
from undiffuse.testing.oracle import GaussianMixture, OracleDenoiser


def test_standardized_input_planes_by_hand():
    x = torch.tensor([[[[1.0, 3.0], [5.0, 7.0]]]])  # mean 4, population std sqrt(5)
    out = standardized_input(x)
    assert out.shape == (1, 3, 2, 2)
    s = math.sqrt(5 + STANDARDIZE_EPS**2)
    torch.testing.assert_close(out[0, 0], (x[0, 0] - 4) / s)
    torch.testing.assert_close(out[0, 1], torch.full((2, 2), 4.0))
    torch.testing.assert_close(out[0, 2], torch.full((2, 2), math.log(s)))


def test_standardized_input_keeps_heavy_blur_detail_through_bf16():
    """The paper's blur at T leaves deviations of ~1e-3 around the mean: rounded to bf16 the raw
    image keeps a handful of values, the standardized one keeps the pattern to ~1 %."""
    blur = make_degradation("blur")
    # Digit-like: a black background (-1) with 15 % bright strokes, so the mean sits near -0.7.
    x0 = (torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.85).float() * 2 - 1
    x_t = blur(x0, blur.num_steps)
    dev = x_t - x_t.mean((-2, -1), keepdim=True)
    raw = x_t.bfloat16().float()
    raw_dev = raw - raw.mean((-2, -1), keepdim=True)
    z = standardized_input(x_t)[:, :1]
    z_dev = z.bfloat16().float() * dev.flatten(1).std(1, unbiased=False).view(-1, 1, 1, 1)
    err_raw = (raw_dev - dev).norm() / dev.norm()
    err_std = (z_dev - dev).norm() / dev.norm()
    assert err_std < 0.01 < 0.3 < err_raw, (err_std, err_raw)


def test_standardized_restorer_builds_three_planes_and_resumes_config():
    from undiffuse.data import TensorData
    from undiffuse.cold.objective import build_restorer, restorer_config

    cfg = TrainConfig(process="blur", net="tiny", standardize_input=True, residual=True,
                      class_conditional=False).resolved()
    data = TensorData(torch.zeros(4, 1, 32, 32), None, None, name="zeros")
    restorer = build_restorer(cfg, data)
    assert restorer.net.config["in_channels"] == 3
    assert restorer_config(restorer) == {"prediction": "x0", "residual": True, "standardize_input": True}
    out = restorer(torch.randn(2, 1, 32, 32), torch.tensor([3, 20]))
    assert out.shape == (2, 1, 32, 32)


@pytest.mark.parametrize("field, value", [("standardize_input", True), ("severity_weighting", "linear"),
                                          ("prior_components", 10)])
def test_cold_only_settings_refused_for_gaussian(field, value):
    with pytest.raises(ValueError, match="appl(ies|y) to cold processes only"):
        TrainConfig(**{field: value}).validate()


def test_unknown_severity_weighting_refused():
    with pytest.raises(ValueError, match="severity_weighting must be one of"):
        TrainConfig(process="blur", severity_weighting="cubic").validate()


class _ScaledFeatures:
    """A stand-in degradation whose end state is the image times per-pixel scales 1 .. 1e-8, and
    whose summary is the pixels: features over eight orders of magnitude, like blur's Fourier modes."""
    num_steps, random, summary_scales_differ = 1, False, True
    scales = torch.tensor([1.0, 1e-3, 1e-6, 1e-8]).reshape(1, 1, 2, 2)

    def __call__(self, x, t, generator=None):
        return x * self.scales

    def summarize(self, x_T):
        return x_T.flatten(1)

    def expand(self, z, shape):
        return z.reshape(-1, *shape)

    def config(self):
        return {}


def test_gmm_prior_keeps_features_of_every_scale():
    # Regression: sklearn's reg_covar (1e-6, absolute) used to be added to unscaled features, so a
    # feature of std 1e-8 was drawn with std 1e-3; fitted on unit-variance features it keeps its own.
    g = torch.Generator().manual_seed(0)
    common = torch.randn(4000, 1, generator=g)
    x0 = (0.8 * common + 0.6 * torch.randn(4000, 4, generator=g)).reshape(-1, 1, 2, 2)  # correlation 0.64
    deg = _ScaledFeatures()
    prior = GaussianMixturePrior.fit(deg, x0, n_components=1)
    data = deg.summarize(deg(x0, 1)).double()
    draws = deg.summarize(prior.sample(4000, deg, torch.Generator().manual_seed(1), dtype=torch.float64))
    ratio = draws.std(0) / data.std(0)
    assert ((ratio > 0.9) & (ratio < 1.1)).all(), ratio
    corr = torch.corrcoef(torch.stack([draws[:, 0], draws[:, 3]]))[0, 1]
    assert abs(corr - 0.64) < 0.05, corr
    # Which degradations scale: blur's Fourier modes do, its channel means and pixel units do not.
    assert make_degradation("blur:T=8:summary_modes=1").summary_scales_differ
    assert not make_degradation("blur:T=8").summary_scales_differ
    assert not make_degradation("pixelate:T=2").summary_scales_differ


def test_prior_components_below_one_refused():
    with pytest.raises(ValueError, match=r"prior_components \(--prior-components\) must be >= 1"):
        TrainConfig(process="blur", prior_components=0).validate()


def test_prepare_prior_fits_the_configured_mixture(tmp_path):
    from undiffuse.cold.prior import PRIOR_FILE, prepare_prior

    deg = make_degradation("blur:T=5:summary_modes=1")
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prior = prepare_prior(tmp_path, deg, x, seed=0, n_components=3)
    assert prior.means.shape == (3, 9)  # 3 Gaussians over the 9 lowest Fourier modes
    again = GaussianMixturePrior.from_json((tmp_path / PRIOR_FILE).read_text())
    np.testing.assert_array_equal(again.means, prior.means)


def test_linear_severity_weighting_frequencies():
    """P(t) = 2t / (T (T + 1)): checked against counts of 200k draws (4 standard errors)."""
    deg = make_degradation("blur:T=10")
    n = 200_000
    t = deg.sample_t(n, torch.Generator().manual_seed(0), weighting="linear")
    counts = torch.bincount(t, minlength=11).double()
    assert counts[0] == 0
    p = torch.arange(1, 11, dtype=torch.float64) * 2 / (10 * 11)
    se = (p * (1 - p) / n).sqrt()
    assert ((counts[1:] / n - p).abs() < 4 * se).all()
    uniform = deg.sample_t(n, torch.Generator().manual_seed(0))
    assert abs(uniform.double().mean().item() - 5.5) < 0.03  # the default stays uniform on 1..T


def test_class_agreement_by_hand():
    assert class_agreement(torch.tensor([1, 2, 3, 3]), torch.tensor([1, 2, 0, 3])) == 0.75
    assert class_agreement(torch.tensor([7]), torch.tensor([7])) == 1.0
    with pytest.raises(ValueError, match="as many predicted as true labels"):
        class_agreement(torch.tensor([1, 2]), torch.tensor([1]))


# --- iterative denoising with the exact denoiser ---------------------------------------------------

def _oracle_setup(std: float = 0.02):
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    gmm = GaussianMixture(means, std)
    deg = make_degradation("gaussian")  # T = 200, cosine
    oracle = OracleDenoiser(gmm, deg.process)

    def restore(x, t):
        return oracle(x.double(), t.double() / deg.num_steps).x0.to(x.dtype)

    x_T, _ = deg.prior((256, 1, 4, 4), torch.Generator().manual_seed(1), dtype=torch.float64)
    return gmm, deg, restore, x_T


def test_iterative_levels():
    assert iterative_levels(200, 1) == [200, 0]
    assert iterative_levels(200, 4) == [200, 150, 100, 50, 0]
    with pytest.raises(ValueError, match="iterations k must be in"):
        iterative_levels(10, 11)


def test_one_iteration_is_the_posterior_mean():
    gmm, deg, restore, x_T = _oracle_setup()
    x = iterative_denoise(restore, deg, x_T, 1, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(x, restore(x_T, torch.full((len(x_T),), deg.num_steps)))
    # x_T carries almost nothing of x0: the answer is near the mixture's mean, far from every point.
    dist = torch.cdist(x.reshape(len(x), -1), gmm.means).min(1).values
    assert dist.median() > 1.0


def test_many_iterations_land_on_the_data():
    """With the exact x0 the loop ends within a few component widths of a mixture point."""
    gmm, deg, restore, x_T = _oracle_setup()
    x = iterative_denoise(restore, deg, x_T, 50, generator=torch.Generator().manual_seed(2))
    dist = torch.cdist(x.reshape(len(x), -1), gmm.means).min(1).values
    assert dist.max() < 0.1 * 4  # 16 dims of std 0.02: typical distance 0.08
    counts = torch.bincount(torch.cdist(x.reshape(len(x), -1), gmm.means).argmin(1), minlength=4)
    assert (counts > 256 / 4 / 3).all()  # every component reached, none dominating


def test_iterative_denoise_refuses_deterministic_degradation():
    blur = make_degradation("blur")
    with pytest.raises(ValueError, match="deterministic"):
        iterative_denoise(lambda x, t: x, blur, torch.zeros(1, 1, 32, 32), 2)


# --- generation prior over blur's surviving Fourier modes ----------------------------------------

def test_fourier_basis_orthonormal_and_blur_invariant():
    from undiffuse.cold.degradations.blur import fourier_basis

    b = fourier_basis(2, 32, 32)
    assert b.shape == (25, 1024)
    torch.testing.assert_close(b @ b.T, torch.eye(25, dtype=torch.float64))
    # Circular blur maps the span of the modes into itself (each cos/sin pair is an eigenspace).
    blur = make_degradation("blur")
    img = b.float().reshape(25, 1, 32, 32)
    out = blur(img, 5).reshape(25, -1).double()
    residual = out - (out @ b.T) @ b
    assert residual.abs().max() < 1e-6


def test_blur_mode_summary_round_trips_the_fully_blurred_image():
    blur = make_degradation("blur:summary_modes=2")
    x0 = (torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.85).float() * 2 - 1
    x_T = blur(x0, blur.num_steps)
    z = blur.summarize(x_T)
    assert z.shape == (6, 25)
    back = blur.expand(z, (1, 32, 32))
    # What is left of x_T beyond the 25 modes is below float32 rounding of the image.
    assert (back - x_T).abs().max() < 1e-5
    means = make_degradation("blur").summarize(x_T)
    torch.testing.assert_close(means, z[:, :1] / 32, atol=1e-6, rtol=0)  # the DC mode is 32 x the mean


def test_blur_summary_modes_refused_when_too_many():
    with pytest.raises(ValueError, match="summary_modes"):
        make_degradation("blur:summary_modes=-1")
    blur = make_degradation("blur:summary_modes=5")
    with pytest.raises(ValueError, match="needs images wider than 10"):
        blur.summarize(torch.zeros(1, 1, 8, 8))


def test_standardized_run_saves_loads_and_resumes(tmp_path):
    """A standardize_input run (3 input planes per channel) passes the run-directory checks on load
    and on resume, and samples the same images after loading."""
    from undiffuse import load
    from undiffuse.data import TensorData
    from undiffuse.trainer import Trainer

    x = (torch.rand(16, 1, 32, 32, generator=torch.Generator().manual_seed(0)) > 0.8).float() * 2 - 1
    data = TensorData(x, None, None, name="strokes")
    cfg = TrainConfig(process="blur:T=4", net="tiny", standardize_input=True, residual=True, bf16=False,
                      class_conditional=False, max_train_steps=2, batch_size=4, sample_every=0, num_samples=2,
                      out=str(tmp_path / "run"))
    trainer = Trainer(cfg, data=data)
    trainer.resume()
    trainer.fit(progress=False)
    pipe = load(tmp_path / "run")
    assert pipe.restorer.standardize and pipe.restorer.net.config["in_channels"] == 3
    restored = pipe.restore(x[:2])
    torch.testing.assert_close(restored, load(tmp_path / "run").restore(x[:2]))
    again = Trainer(cfg.updated(max_train_steps=3), data=data)
    assert again.resume() and again.step == 2


def test_cold_blur_preset_is_the_papers_blur_with_the_recipe():
    from undiffuse.config import preset

    cfg = preset("cold-blur").resolved()
    blur, paper = make_degradation(cfg.process), make_degradation("blur")
    assert {**blur.settings(), "summary_modes": 0} == paper.settings()  # only the prior's features differ
    assert cfg.standardize_input and cfg.residual and cfg.loss == "l2" and cfg.sampler == "improved"


def test_a_blur_kernel_wider_than_the_images_is_refused_before_training(tmp_path):
    from undiffuse.data import load_dataset
    from undiffuse.trainer import Trainer

    data = load_dataset("digits", n=16, seed=0)  # 8 x 8 images; the paper's kernel is 11 wide
    cfg = TrainConfig(data="digits", net="tiny", process="blur", max_train_steps=1, batch_size=4, out=str(tmp_path / "r"))
    with pytest.raises(ValueError, match=r"blur kernel \(11 x 11\) is wider than the 8-pixel images.*blur:k=7"):
        Trainer(cfg, data=data)
    assert not (tmp_path / "r").exists()  # refused before anything was written
    Trainer(cfg.updated(process="blur:k=7"), data=data)  # the suggested kernel fits
