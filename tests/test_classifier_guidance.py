"""Classifier guidance (Dhariwal & Nichol 2021) against the exact Gaussian-mixture oracle, and a small
noisy classifier trained on the built-in digits."""
from __future__ import annotations

import argparse
import json

import pytest
import torch

from undiffuse.classifier import (EVAL_TS, NoisyClassifier, TimeClassifier, load_classifier, save_classifier,
                                  train_classifier)
from undiffuse.cli_classifier import add_cli, cmd_train_classifier
from undiffuse.data import load_dataset
from undiffuse.denoiser import Denoiser
from undiffuse.guidance import ClassifierFreeGuidance, ClassifierGuidance
from undiffuse.nets import UNet
from undiffuse.processes import DDPM, EDM, VE, VP
from undiffuse.samplers import ddim, timesteps
from undiffuse.testing import GaussianMixture, OracleDenoiser
from undiffuse.testing.oracle import OracleClassifier

F64 = torch.float64
GMM = GaussianMixture(torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], dtype=F64),
                      torch.tensor([[0.3, 0.5], [0.6, 0.4], [0.45, 0.45]], dtype=F64),
                      torch.tensor([5.0, 3.0, 2.0], dtype=F64))
PROCESSES = {"ddpm-cosine": DDPM(1000, "cosine"), "ddpm-linear": DDPM(1000, "linear"), "vp": VP("linear"),
             "ve": VE(), "edm": EDM()}
TS = [0.05, 0.2, 0.5, 0.8]
X = 2 * torch.randn(60, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
Y = torch.arange(60) % 3


# --- the exact identity: unconditional oracle + exact classifier = conditional oracle ---------------

@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_scale_one_on_the_unconditional_oracle_is_the_conditional_oracle(name):
    """Bayes: grad log p(x|y) = grad log p(x) + grad log p(y|x), so eps_c = eps_u - sigma grad log p(y|x)."""
    process = PROCESSES[name]
    oracle = OracleDenoiser(GMM, process)
    guided = ClassifierGuidance(oracle, OracleClassifier(GMM, process), scale=1.0)
    per_sample_t = torch.tensor(TS, dtype=F64).repeat(15)  # (B,) levels, as some samplers pass
    for t in [torch.tensor(t, dtype=F64) for t in TS] + [per_sample_t]:
        want, got = oracle(X, t, Y), guided(X, t, Y)
        torch.testing.assert_close(got.eps, want.eps, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(got.x0, want.x0, rtol=1e-9, atol=1e-9)


def test_scale_zero_is_the_wrapped_denoiser_and_none_cond_is_refused():
    process = PROCESSES["ddpm-cosine"]
    oracle = OracleDenoiser(GMM, process)
    guided = ClassifierGuidance(oracle, OracleClassifier(GMM, process), scale=0.0)
    t = torch.tensor(0.4, dtype=F64)
    want, got = oracle(X, t), guided(X, t, Y)
    assert torch.equal(got.eps, want.eps) and torch.equal(got.x0, want.x0)
    with pytest.raises(ValueError, match="needs a condition"):
        ClassifierGuidance(oracle, OracleClassifier(GMM, process), scale=1.0)(X, t, None)


def test_oracle_classifier_is_bayes_rule():
    process = PROCESSES["vp"]
    clf = OracleClassifier(GMM, process)
    for t in (0.1, 0.5, 0.9):
        log_p = clf.log_probs(X, t)
        torch.testing.assert_close(log_p.exp().sum(1), torch.ones(60, dtype=F64))
        # Brute force: pi_k N(x; alpha mu_k, alpha^2 s_k^2 + sigma^2), normalised over k.
        a, s = (float(v) for v in process.alpha_sigma(torch.tensor(t, dtype=F64)))
        dens = torch.stack([GMM.weights[k] * torch.distributions.Normal(
            a * GMM.means[k], (a**2 * GMM.stds[k] ** 2 + s**2).sqrt()).log_prob(X).sum(1).exp()
            for k in range(3)], dim=1)
        torch.testing.assert_close(log_p, (dens / dens.sum(1, keepdim=True)).log())
        torch.testing.assert_close(clf.log_prob(X, t, Y), log_p[torch.arange(60), Y])


def test_composes_with_a_conditional_and_a_cfg_denoiser():
    """With pass_cond the wrapped denoiser sees the labels; the shift is the same -s sigma grad."""
    process = PROCESSES["ddpm-cosine"]
    oracle, clf = OracleDenoiser(GMM, process), OracleClassifier(GMM, process)
    t = torch.tensor(0.6, dtype=F64)
    x = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(clf.log_prob(x, t, Y).sum(), x)
    sigma = float(process.sigma(t))
    for inner in (oracle, ClassifierFreeGuidance(oracle, 2.0, null_cond=3)):
        base = inner(X, t, Y)
        got = ClassifierGuidance(inner, clf, scale=1.5, pass_cond=True)(X, t, Y)
        torch.testing.assert_close(got.eps, base.eps - 1.5 * sigma * grad)
        torch.testing.assert_close(X, float(process.alpha(t)) * got.x0 + sigma * got.eps)


def test_ddim_with_oracle_guidance_lands_in_the_requested_component():
    gmm = GaussianMixture(torch.tensor([[-3.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=F64), 0.4)
    process = DDPM(1000, "cosine")
    oracle, clf = OracleDenoiser(gmm, process), OracleClassifier(gmm, process)
    n = 300
    y = torch.arange(n) % 3
    ts = timesteps(process, 50)
    hit, samples = {}, {}
    for scale in (0.0, 1.0, 3.0):
        x1 = process.prior((n, 2), generator=torch.Generator().manual_seed(1), dtype=F64)
        x = ddim(ClassifierGuidance(oracle, clf, scale), x1, ts, cond=y, eta=0.0)
        samples[scale] = x
        hit[scale] = float((gmm.responsibilities(x).argmax(1) == y).double().mean())
    assert hit[0.0] < 0.6 < hit[1.0] <= hit[3.0], hit
    assert hit[1.0] > 0.99, hit
    # Scale 1 is the exact conditional: each component's samples centre on its mean with its std;
    # scale 3 samples p(y|x)^3 p(x), which sharpens every component.
    for k in range(3):
        assert (samples[1.0][y == k].mean(0) - gmm.means[k]).abs().max() < 0.15
        std1, std3 = samples[1.0][y == k].std(0), samples[3.0][y == k].std(0)
        assert ((std1 - 0.4).abs() < 0.08).all() and (std3 < std1 - 0.03).all(), (std1, std3)


# --- a trained noisy classifier ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_clf():
    data = load_dataset("digits")
    return train_classifier(data, DDPM(1000, "cosine"), steps=200, batch_size=64, lr=3e-3, seed=0,
                            progress=False)


def test_trained_classifier_beats_chance_and_degrades_with_noise(digits_clf):
    acc = [digits_clf.info["accuracy_by_t"][str(t)] for t in EVAL_TS]
    assert acc[0] > 0.6, acc  # chance is 0.1
    assert acc[-1] < acc[0] - 0.3, acc
    assert all(b <= a + 0.05 for a, b in zip(acc, acc[1:])), acc
    assert digits_clf.info["num_heldout"] == 180 and not digits_clf.training


def test_save_load_round_trip_gives_identical_logits(digits_clf, tmp_path):
    save_classifier(digits_clf, digits_clf.info, tmp_path / "clf")
    loaded = load_classifier(tmp_path / "clf", DDPM(1000, "cosine"))
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.linspace(0.05, 0.95, 16, dtype=F64)
    with torch.no_grad():
        assert torch.equal(loaded(x, t), digits_clf(x, t))
    assert loaded.info["accuracy_by_t"] == digits_clf.info["accuracy_by_t"]
    assert json.loads((tmp_path / "clf" / "classifier.json").read_text())["config"] == digits_clf.net.config
    with pytest.raises(ValueError, match="process"):
        load_classifier(tmp_path / "clf", DDPM(1000, "linear"))


def test_guidance_with_the_trained_classifier_under_no_grad(digits_clf):
    process = digits_clf.process
    net = UNet(in_channels=1, image_size=8, channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(), dropout=0.0)
    den = Denoiser(net, process, "eps").eval()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    t, y = torch.tensor(0.3, dtype=F64), torch.arange(8)
    guided = ClassifierGuidance(den, digits_clf, scale=2.0)
    with torch.no_grad():
        base, got = den(x, t), guided(x, t, y)
    grad = guided.classifier_grad(x, t, y)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0
    sigma = float(process.sigma(t))
    torch.testing.assert_close(got.eps, base.eps - 2.0 * sigma * grad)
    assert not torch.allclose(got.x0, base.x0)
    torch.testing.assert_close(x, float(process.alpha(t)) * got.x0 + sigma * got.eps)
    # float64 inputs: outputs and gradients in float64, equal to the float32 ones up to rounding.
    x64 = x.double()
    assert guided.classifier_grad(x64, t, y).dtype == F64
    torch.testing.assert_close(digits_clf.log_prob(x64, t, y).float(), digits_clf.log_prob(x, t, y),
                               rtol=1e-4, atol=1e-5)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        guided(x, t, y)


def test_guided_x0_is_clipped_like_the_wrapped_denoiser(digits_clf):
    """Near t = 1 the shift sigma^2 / alpha * grad of x0 is huge; a clipping denoiser's x0 stays in range."""
    process = digits_clf.process
    net = UNet(in_channels=1, image_size=8, channels=16, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(), dropout=0.0)
    den = Denoiser(net, process, "eps", clip_x0=1.0).eval()
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    t, y = torch.tensor(0.99, dtype=F64), torch.arange(8)
    a, s = (float(v) for v in process.alpha_sigma(t))
    with torch.no_grad():
        clipped = ClassifierGuidance(den, digits_clf, scale=3.0)(x, t, y)
        free = ClassifierGuidance(den, digits_clf, scale=3.0, clip_x0=None)(x, t, y)
    assert clipped.x0.abs().max() <= 1.0 < free.x0.abs().max()
    torch.testing.assert_close(x, a * clipped.x0 + s * clipped.eps)
    torch.testing.assert_close(x, a * free.x0 + s * free.eps)


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    data = load_dataset("digits").subsample(300, seed=0)
    state = torch.get_rng_state()
    nets = [train_classifier(data, VP("cosine"), steps=5, batch_size=16, seed=7, progress=False,
                             net_config={"channels": 8, "channel_mult": [1]}).net for _ in range(2)]
    assert torch.equal(torch.get_rng_state(), state)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        assert torch.equal(a, b), k
    assert isinstance(nets[0], NoisyClassifier)
    with pytest.raises(ValueError, match="images"):
        NoisyClassifier(channels=8)(torch.randn(2, 5), torch.zeros(2))


def test_cli_trains_into_the_run_directory(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({
        "train": {"data": "digits", "image_size": None, "channels": None},
        "data": {"shape": [1, 8, 8]}, "process": {"type": "ddpm", "num_steps": 100, "schedule": "cosine"}}))
    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train-classifier", "--run", str(run), "--max-train-steps", "3", "--batch-size", "8"])
    assert cmd_train_classifier(args) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    clf = load_classifier(run / "classifier")
    assert isinstance(clf, TimeClassifier) and clf.process.config()["num_steps"] == 100
