"""Tests for undiffuse.metrics: FID, KID, PRDC, class statistics and the feature network."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

import undiffuse.metrics.features as features_mod
from undiffuse.data import load_dataset
from undiffuse.metrics import (FeatureNet, class_statistics, extract_features, feature_stats, fid_from_features,
                               frechet_distance, get_feature_net, kid, load_feature_net, predict_labels, prdc,
                               save_feature_net, train_feature_net)


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- Fréchet distance / FID -------------------------------------------------------------------------

def test_frechet_diagonal_closed_form() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(5), rng.standard_normal(5)
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    # Diagonal covariances commute, so (S1 S2)^{1/2} = diag(sqrt(a b)).
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_frechet_full_covariance_matches_sqrtm_reference() -> None:
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)
    # Symmetric in its arguments, and accepts tensors.
    t = [torch.from_numpy(v) for v in (mu2, s2, mu1, s1)]
    assert frechet_distance(*t) == pytest.approx(ref, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_even_when_singular() -> None:
    rng = np.random.default_rng(2)
    full = rng.standard_normal((2000, 16)) @ rng.standard_normal((16, 16))
    few = torch.from_numpy(rng.standard_normal((50, 128))).float()  # N < D: singular covariance
    for f in (full, few):
        scale = np.trace(feature_stats(f)[1])
        assert fid_from_features(f, f) < 1e-6 * scale


def test_fid_of_shifted_gaussians_approaches_squared_shift() -> None:
    gen = torch.Generator().manual_seed(3)
    m = torch.tensor([2.0, -1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.5])
    x = torch.randn(20000, 8, generator=gen)
    y = torch.randn(20000, 8, generator=gen) + m
    assert fid_from_features(x, y) == pytest.approx(float(m @ m), abs=0.05)


def test_feature_stats_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"need features of shape \(N >= 2, D\), got \(5,\)"):
        feature_stats(np.zeros(5))
    with pytest.raises(ValueError, match="shape mismatch: mu"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# --- KID ----------------------------------------------------------------------------------------------

def _mmd2_brute(x: np.ndarray, y: np.ndarray) -> float:
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    return kxx + kyy - 2 * kxy


def test_kid_equals_brute_force_unbiased_mmd() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)) + 0.3
    # subset_size >= n draws every row each time (in some order), so all subsets agree.
    mean, stderr = kid(x, y, num_subsets=3, subset_size=100)
    assert mean == pytest.approx(_mmd2_brute(x, y), rel=1e-10)
    assert stderr == pytest.approx(0.0, abs=1e-12)


def test_kid_near_zero_for_same_distribution_and_positive_for_shift() -> None:
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(4000, 16, generator=gen), torch.randn(4000, 16, generator=gen)
    mean, stderr = kid(x, y, num_subsets=100, subset_size=200)
    assert abs(mean) < 3 * stderr
    shifted_mean, shifted_err = kid(x, y + 0.5, num_subsets=100, subset_size=200)
    assert shifted_mean > 10 * shifted_err and shifted_mean > 0.05
    assert kid(x, y, num_subsets=5, subset_size=50, seed=7) == kid(x, y, num_subsets=5, subset_size=50, seed=7)


# --- precision / recall / density / coverage --------------------------------------------------------

def _prdc_brute(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """Direct transcription of Kynkäänniemi et al. 2019 and Naeem et al. 2020 with full matrices."""
    dist = lambda a, b: np.linalg.norm(a[:, None] - b[None], axis=-1)  # noqa: E731
    r_real = np.sort(dist(real, real), axis=1)[:, k]
    r_fake = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)  # (N, M)
    inside = d <= r_real[:, None]
    return {"precision": inside.any(0).mean(), "recall": (d <= r_fake[None]).any(1).mean(),
            "density": inside.sum() / (k * len(fake)), "coverage": inside.any(1).mean()}


def test_prdc_identical_sets() -> None:
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(6))
    out = prdc(x, x.clone(), k=3)
    assert out["precision"] == out["recall"] == out["coverage"] == 1.0
    # Each point lies in its own ball and its k neighbours' (no ties in continuous data): (k + 1) / k.
    assert out["density"] == pytest.approx(4 / 3)


def test_prdc_same_distribution_has_density_near_one() -> None:
    gen = torch.Generator().manual_seed(7)
    out = prdc(torch.randn(2000, 4, generator=gen), torch.randn(2000, 4, generator=gen), k=5)
    assert out["density"] == pytest.approx(1.0, abs=0.1)
    assert min(out["precision"], out["recall"], out["coverage"]) > 0.85


def test_prdc_far_apart_sets_score_zero() -> None:
    gen = torch.Generator().manual_seed(8)
    out = prdc(torch.randn(200, 8, generator=gen), torch.randn(150, 8, generator=gen) + 100.0)
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_hand_example_1d() -> None:
    real = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # k=1 radii all 1
    fake = torch.tensor([[0.4], [0.5], [3.6], [10.0], [10.5]])  # k=1 radii 0.1, 0.1, 3.1, 0.5, 0.5
    out = prdc(real, fake, k=1)
    # precision: 0.4, 0.5, 3.6 lie in real balls -> 3/5. density: 0.4 and 0.5 each in 2 balls
    # (of 0 and 1), 3.6 in 1 (of 3) -> 5 / (1 * 5). coverage: every real ball but 2's holds a fake.
    # recall: 3.6's ball [0.5, 6.7] holds reals 1, 2, 3; nothing holds 0 -> 3/4.
    assert out == pytest.approx({"precision": 0.6, "recall": 0.75, "density": 1.0, "coverage": 0.75})


def test_prdc_chunked_matches_brute_force() -> None:
    rng = np.random.default_rng(9)
    real, fake = rng.standard_normal((1500, 6)), rng.standard_normal((1100, 6)) * 1.3 + 0.2  # > one chunk
    out = prdc(real, fake, k=4)
    assert out == pytest.approx(_prdc_brute(real, fake, 4), abs=1e-12)


def test_prdc_rejects_bad_k() -> None:
    with pytest.raises(ValueError, match=r"need 1 <= k < number of samples \(3\), got k=3"):
        prdc(torch.randn(3, 2), torch.randn(3, 2), k=3)


# --- class statistics --------------------------------------------------------------------------------

def test_class_statistics_matching_histograms_have_zero_kl() -> None:
    pred = torch.tensor([0, 0, 1, 1, 2, 2])
    data = torch.tensor([0, 1, 2] * 7)  # same frequencies, other size, class 3 absent in both
    out = class_statistics(pred, 4, data)
    assert out["histogram"] == [2, 2, 2, 0] and out["num_present"] == 3 and out["reference"] == "data"
    assert out["kl"] == pytest.approx(0.0, abs=1e-12)
    assert class_statistics(torch.arange(10).repeat(3), 10)["kl"] == pytest.approx(0.0, abs=1e-12)


def test_class_statistics_collapse_and_threshold() -> None:
    one_class = class_statistics(torch.zeros(100, dtype=torch.long), 10)
    assert one_class["num_present"] == 1
    assert one_class["kl"] == pytest.approx(math.log(10), abs=0.02)  # KL(delta || uniform) = log K
    stray = class_statistics(torch.tensor([0] * 50 + [1] * 50 + [2] * 2), 3)  # threshold 0.1 * 102 / 3
    assert stray["num_present"] == 3 and stray["num_present_thresholded"] == 2
    # Generated mass on a class the data never shows: large but finite thanks to the smoothing.
    kl = class_statistics(torch.ones(10, dtype=torch.long), 2, torch.zeros(10, dtype=torch.long))["kl"]
    assert 5 < kl < math.inf
    json.dumps(stray)  # JSON-friendly
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got \[0, 3\]"):
        class_statistics(torch.tensor([0, 3]), 3)


# --- feature network ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 8, 28])
def test_feature_net_shapes(size: int) -> None:
    net = FeatureNet(in_channels=1, num_classes=10, image_size=size)
    x = torch.rand(4, 1, size, size) * 2 - 1
    assert net(x).shape == (4, 10)
    assert net.features(x).shape == (4, 128)
    assert extract_features(net, x, batch_size=3).shape == (4, 128)
    assert net.training  # extract_features restores the mode it found


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_net(digits):
    return train_feature_net(digits.x, digits.labels, digits.num_classes, seed=0, epochs=8)


def test_train_feature_net_on_digits(digits, digits_net) -> None:
    net, info = digits_net
    assert info["heldout_accuracy"] > 0.9 and info["train_accuracy"] > 0.9
    assert info["num_train"] + info["num_heldout"] == len(digits.labels)
    assert info["num_heldout"] == pytest.approx(0.2 * len(digits.labels), abs=1)
    assert (predict_labels(net, digits.x) == digits.labels).double().mean() > 0.9
    # Deterministic: the same seed gives identical weights, and the global RNG is left alone.
    state = torch.random.get_rng_state()
    again, _ = train_feature_net(digits.x, digits.labels, digits.num_classes, seed=0, epochs=8)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_feature_net_cache_round_trip(tmp_path, digits, digits_net) -> None:
    net, info = digits_net
    save_feature_net(net, info, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["info.json", "model.safetensors"]  # no tmp left
    loaded, loaded_info = load_feature_net(tmp_path)
    assert torch.equal(extract_features(loaded, digits.x[:50]), extract_features(net, digits.x[:50]))
    assert loaded_info["heldout_accuracy"] == info["heldout_accuracy"]


def test_get_feature_net_caches_and_retrains_corrupt_cache(tmp_path, monkeypatch, digits_net) -> None:
    monkeypatch.setitem(features_mod._EPOCHS, "digits", 2)  # speed: the recipe is tested above
    net, info = get_feature_net("digits", cache_dir=tmp_path)
    directory = tmp_path / "digits-v1"
    assert json.loads((directory / "info.json").read_text())["dataset"] == "digits"
    assert info["epochs"] == 2 and info["version"] == "v1"

    def no_training(*args, **kwargs):
        raise AssertionError("should have loaded the cache")

    with monkeypatch.context() as m:
        m.setattr(features_mod, "train_feature_net", no_training)
        cached, _ = get_feature_net("digits", cache_dir=tmp_path)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    assert torch.equal(extract_features(cached, x), extract_features(net, x))

    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="unusable"):
        get_feature_net("digits", cache_dir=tmp_path)
    load_feature_net(directory)  # rewritten and readable again
    with pytest.raises(ValueError, match="no feature net"):
        get_feature_net("cifar10", cache_dir=tmp_path)
