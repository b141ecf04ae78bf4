"""The KL autoencoder: shapes for factors 4 and 8, the closed-form KL, config round trips, bad
configs, and the interop contract with diffusers' AutoencoderKL (same keys, same outputs)."""
from __future__ import annotations

import pytest
import torch

from undiffuse.latent.autoencoder import AUTOENCODER_PRESETS, AutoencoderKL, DiagonalGaussian


def _ae(name: str, **changes) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(**{**AUTOENCODER_PRESETS[name], **changes}).eval()


@pytest.mark.parametrize("name, factor, latent", [("kl-f4", 4, (3, 8, 8)), ("kl-f8", 8, (4, 4, 4))])
def test_shapes(name: str, factor: int, latent: tuple[int, int, int]) -> None:
    ae = _ae(name)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    q = ae.encode(x)
    assert ae.factor == factor and ae.latent_shape((3, 32, 32)) == latent
    assert q.mean.shape == q.logvar.shape == (2, *latent)
    assert ae.decode(q.sample(torch.Generator().manual_seed(0))).shape == x.shape


def test_kl_closed_form_matches_torch_distributions() -> None:
    gen = torch.Generator().manual_seed(0)
    moments = torch.randn(3, 8, 4, 4, generator=gen)
    q = DiagonalGaussian(moments)
    p = torch.distributions.Normal(q.mean, q.std)
    expected = torch.distributions.kl_divergence(p, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), expected, rtol=1e-5, atol=1e-5)


def test_kl_matches_monte_carlo() -> None:
    """E_q[log q(z) - log N(z; 0, I)] estimated from 20000 samples agrees with the closed form."""
    gen = torch.Generator().manual_seed(1)
    q = DiagonalGaussian(torch.randn(1, 4, 2, 2, generator=gen, dtype=torch.float64) * 0.7)
    z = torch.stack([q.sample(gen) for _ in range(20000)])
    log_q = torch.distributions.Normal(q.mean, q.std).log_prob(z).flatten(1).sum(1)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    estimate = (log_q - log_p).mean()
    stderr = (log_q - log_p).std() / 20000 ** 0.5
    assert abs(estimate - q.kl()[0]) < 4 * stderr


def test_sample_is_seeded() -> None:
    q = DiagonalGaussian(torch.randn(2, 6, 3, 3))
    a, b = q.sample(torch.Generator().manual_seed(3)), q.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, q.mean)


def test_config_round_trip() -> None:
    ae = _ae("kl-f4", sample_size=64, mid_block_add_attention=False)
    again = AutoencoderKL.from_config(ae.config)
    again.load_state_dict(ae.state_dict())
    assert again.config == ae.config
    x = torch.randn(1, 3, 16, 16)
    assert torch.equal(again.encode(x).mean, ae.encode(x).mean)


@pytest.mark.parametrize("change, match", [
    ({"act_fn": "relu"}, "act_fn='relu' is not supported"),
    ({"use_quant_conv": False}, "use_quant_conv"),
    ({"norm_num_groups": 24}, "norm_num_groups 24 must divide"),
    ({"down_block_types": ["AttnDownEncoderBlock2D"] * 3}, "down_block_types must be 3 x 'DownEncoderBlock2D'"),
    ({"frobnicate": 1}, r"unknown keys \['frobnicate'\]"),
])
def test_bad_config(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AutoencoderKL.from_config({**AUTOENCODER_PRESETS["kl-f4"], **change})


def test_bad_images() -> None:
    ae = _ae("kl-f8")
    with pytest.raises(ValueError, match="not divisible by the autoencoder's downsampling factor 8"):
        ae.encode(torch.zeros(1, 3, 20, 20))
    with pytest.raises(ValueError, match="takes 3-channel images, not 1-channel"):
        ae.encode(torch.zeros(1, 1, 32, 32))


@pytest.mark.parametrize("name, attention", [("kl-f4", True), ("kl-f8", False)])
def test_same_as_diffusers(name: str, attention: bool) -> None:
    """Our weights load into diffusers' AutoencoderKL (same keys and shapes) and give the same
    posterior, KL and decoding; diffusers' own random weights load back into ours."""
    diffusers = pytest.importorskip("diffusers")
    ours = _ae(name, sample_size=32, mid_block_add_attention=attention)
    theirs = diffusers.AutoencoderKL(**ours.config).eval()
    assert set(theirs.state_dict()) == set(ours.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        q, d = ours.encode(x), theirs.encode(x).latent_dist
        torch.testing.assert_close(q.mean, d.mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(q.logvar, d.logvar, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(q.kl(), d.kl(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(ours.decode(q.mean), theirs.decode(d.mean).sample, rtol=1e-4, atol=1e-4)
        back = AutoencoderKL.from_config(dict(theirs.config))
        back.load_state_dict(theirs.state_dict())
        torch.testing.assert_close(back.eval()(x)[0], theirs(x).sample, rtol=1e-4, atol=1e-4)
