"""Cold Diffusion (Bansal et al. 2022): the degradations of ``undiffuse.cold.degradations`` and the
samplers of ``undiffuse.cold.samplers``, on tiny tensors (the whole file runs in seconds)."""
import json

import pytest
import torch
import torch.nn.functional as F

from undiffuse.data import load_digits
from undiffuse.cold import ColdRestorer, cold_loss
from undiffuse.cold.degradations import (DEGRADATIONS, Blur, Degradation, Desaturate, Fade, GaussianNoise, Mask,
                                         Pixelate, Snow, make_degradation)
from undiffuse.cold.degradations.blur import blur_reference
from undiffuse.cold.prior import GaussianMixturePrior
from undiffuse.cold.samplers import COLD_SAMPLERS, cold_sample, direct, generate, improved, naive


def smooth_images(b=3, c=3, h=12, w=10, seed=0):
    """Random images in [-1, 1] with some structure (a blurred noise field)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, max(2, h // 3), max(2, w // 3), generator=g)
    return torch.tanh(1.5 * F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False))


@pytest.fixture(scope="module")
def digits():
    return load_digits().x  # (1797, 1, 8, 8) in [-1, 1]


# Fast settings of every family, and the batch each is tested on.
CASES = {
    "blur": lambda: Blur(),                                             # paper MNIST default
    "blur_reflect": lambda: Blur(8, 5, 0.6, "linear", 0.1, "reflect"),
    "mask": lambda: Mask(20),
    "mask_middle_random_fill": lambda: Mask(20, 1.0, 0.3, center="middle", fill="random"),
    "pixelate": lambda: Pixelate(3),
    "desaturate": lambda: Desaturate(10),
    "snow": lambda: Snow(10),
    "fade": lambda: Fade(20, source="photos"),
    "gaussian": lambda: GaussianNoise(20),
}


def batch_for(name):
    if name == "blur":
        return smooth_images(3, 1, 32, 32)
    if name == "pixelate":
        return smooth_images(3, 2, 16, 16)
    return smooth_images(3, 3, 12, 10)


def slice_state(state, i):
    return None if state is None else {k: v[i:i + 1] for k, v in state.items()}


@pytest.mark.parametrize("name", CASES)
def test_identity_shapes_dtypes(name):
    d = CASES[name]()
    for dtype in (torch.float32, torch.float64):
        x = batch_for(name).to(dtype)
        assert torch.equal(d(x, 0), x)  # D(x0, 0) = x0, bit for bit
        assert torch.equal(d(x, torch.zeros(len(x), dtype=torch.long)), x)
        y = d(x, d.num_steps)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    odd = smooth_images(2, 2 if name != "desaturate" else 3, 7, 9)  # any size and channel count
    assert d(odd, d.num_steps).shape == odd.shape
    with pytest.raises(ValueError, match=rf"severities must lie in 0\.\.{d.num_steps} \(T\), got {d.num_steps + 1}"):
        d(odd, d.num_steps + 1)


@pytest.mark.parametrize("name", CASES)
def test_severity_is_monotone(name):
    """The distance from x0 grows with t (batch mean; for the paper's nearly-box blur kernel a
    few single images wobble by a hair, since some of its frequency gains are negative)."""
    d = CASES[name]()
    x = batch_for(name)
    state = d.sample_state(x.shape, torch.Generator().manual_seed(1))
    dist = torch.stack([(d(x, t, state=state) - x).flatten(1).norm(dim=1).mean()
                        for t in range(d.num_steps + 1)])
    assert (dist[1:] >= dist[:-1] - 1e-6).all(), dist
    assert dist[-1] > dist[1] > 0


@pytest.mark.parametrize("name", CASES)
def test_deterministic_and_global_rng_untouched(name):
    d = CASES[name]()
    x = batch_for(name)
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = d(x, d.num_steps, generator=torch.Generator().manual_seed(7))
    b = d(x, d.num_steps, generator=torch.Generator().manual_seed(7))
    c, c2 = d(x, d.num_steps), d(x, d.num_steps)  # no generator: the private seed
    assert torch.equal(a, b) and torch.equal(c, c2)
    assert torch.equal(torch.get_rng_state(), before)
    if d.random:
        other = d(x, d.num_steps, generator=torch.Generator().manual_seed(8))
        assert not torch.equal(a, other)


@pytest.mark.parametrize("name", CASES)
def test_per_sample_severities_equal_per_t_calls(name):
    d = CASES[name]()
    x = batch_for(name)
    x = torch.cat([x, x.flip(0)])[:4]
    t = torch.tensor([0, d.num_steps, 1, max(1, d.num_steps // 2)])
    state = d.sample_state(x.shape, torch.Generator().manual_seed(3))
    y = d(x, t, state=state)
    for i in range(len(x)):
        one = d(x[i:i + 1], int(t[i]), state=slice_state(state, i))
        torch.testing.assert_close(y[i:i + 1], one, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", CASES)
def test_differentiable_and_config_round_trip(name):
    d = CASES[name]()
    x = batch_for(name).requires_grad_(True)
    d(x, max(1, d.num_steps // 2)).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    cfg = json.loads(json.dumps(d.config()))  # JSON-serialisable
    assert make_degradation(cfg) == d
    assert torch.equal(make_degradation(cfg)(x.detach(), d.num_steps), d(x.detach(), d.num_steps))


def test_specs_and_registry():
    assert set(DEGRADATIONS) == {"blur", "mask", "pixelate", "desaturate", "snow", "fade", "gaussian"}
    d = make_degradation("blur:T=20:sigma=7")
    assert isinstance(d, Blur) and d.num_steps == 20 and d.sigma == 7.0 and d.kernel_size == 11
    assert make_degradation("pixelate:4").num_steps == 4
    m = make_degradation("mask:center=middle:fill=random")
    assert m.center == "middle" and m.fill == "random" and m.random
    assert make_degradation("blur:mean_at_end=true").mean_at_end
    assert make_degradation({"type": "desaturate", "num_steps": 5}) == Desaturate(5)
    for bad, needle in [("blurr", "unknown degradation 'blurr'"), ("blur:sgima=3", "blur has no setting 'sgima'"),
                        ("blur:schedule=cubic", "unknown sigma schedule 'cubic'"),
                        ("mask:fill=blue", "fill must be a number or 'random', got 'blue'")]:
        with pytest.raises(ValueError, match=needle):
            make_degradation(bad)


# --- the end states the docs promise ---------------------------------------------------------


def test_blur_matches_successive_convolutions():
    for blur, x in [(Blur(), smooth_images(2, 1, 32, 32)),
                    (Blur(6, 5, 0.6, "linear", 0.1, "reflect"), smooth_images(2, 3, 12, 10)),
                    (Blur(4, 3, 1.0, "exponential", 0.2, "circular"), smooth_images(2, 2, 9, 7))]:
        for t in (1, 3, blur.num_steps):
            torch.testing.assert_close(blur(x, t), blur_reference(x, t, blur), atol=2e-5, rtol=0)


def test_circular_blur_tends_to_the_channel_mean(digits):
    blur = Blur()  # the paper's MNIST setting: T = 20, 11 x 11, sigma 7, circular
    f = blur.mean_residual(32, 32)
    assert f < 0.03  # what is left of x - mean(x) after T steps on 32 x 32 images
    x = F.pad(digits[:8], (12, 12, 12, 12), value=-1.0)  # 32 x 32
    m = x.mean(dim=(-2, -1), keepdim=True)
    x_T = blur(x, blur.num_steps)
    left = (x_T - m).flatten(1).norm(dim=1)
    assert (left <= f * (x - m).flatten(1).norm(dim=1) + 1e-4).all()
    assert (x_T - m).abs().max() < 0.05  # the stated tolerance, in pixel values
    torch.testing.assert_close(x_T.mean(dim=(-2, -1), keepdim=True), m, atol=1e-5, rtol=0)  # mean kept
    exact = Blur(mean_at_end=True)(x, 20)
    torch.testing.assert_close(exact, m.expand_as(x), atol=1e-6, rtol=0)


def test_pixelate_end_state_is_constant_blocks():
    x = smooth_images(2, 3, 16, 16)
    p = Pixelate(4)
    y = p(x, 3)  # 8 x 8 blocks
    blocks = F.avg_pool2d(x, 8).repeat_interleave(8, -2).repeat_interleave(8, -1)
    torch.testing.assert_close(y, blocks, atol=1e-6, rtol=0)
    full = p(x, 4)  # t = log2(16): one block, the channel mean
    torch.testing.assert_close(full, x.mean(dim=(-2, -1), keepdim=True).expand_as(x), atol=1e-6, rtol=0)
    odd = smooth_images(1, 1, 10, 6)  # sides not divisible by 2^t: shorter edge blocks
    y = Pixelate(2)(odd, 2)
    assert torch.allclose(y[..., :4, :4], odd[..., :4, :4].mean(), atol=1e-6)
    assert torch.allclose(y[..., 8:, 4:], odd[..., 8:, 4:].mean(), atol=1e-6)


def test_desaturate_end_state_is_gray():
    x = smooth_images(2, 3, 8, 8)
    for weights in ("mean", "luma"):
        d = Desaturate(10, weights)
        g = d(x, 10)
        assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
        half = d(x, 5)  # t / T of the colour is gone
        torch.testing.assert_close(half - g, 0.5 * (x - g), atol=1e-6, rtol=0)


def test_mask_fraction_grows_and_fills():
    shape = (3, 1, 16, 16)
    for m in (Mask(30), Mask(30, center="middle")):
        frac = torch.stack([m.masked_fraction(shape, t) for t in range(31)])
        assert (frac[1:] > frac[:-1]).all()
        assert (frac[-1] > 0.3).all()
    m = Mask(30, center="middle", fill="random")
    x = smooth_images(2, 3, 16, 16)
    state = m.sample_state(x.shape, torch.Generator().manual_seed(0))
    y = m(x, 30, state=state)
    mid = y[:, :, 7:9, 7:9]  # the middle is fully masked: the per-image fill colour
    torch.testing.assert_close(mid, state["fill"][:, :, None, None].expand_as(mid), atol=1e-5, rtol=0)


def test_snow_only_adds_light():
    s = Snow(10)
    x = smooth_images(2, 3, 16, 16)
    prev = x
    for t in range(1, 11):
        y = s(x, t)
        assert (y >= prev - 1e-6).all() and (y <= torch.clamp(x, min=1.0) + 1e-6).all()
        prev = y
    assert (prev - x).mean() > 0.2  # plenty of snow at T


def test_fade_and_noise_end_states():
    x = smooth_images(2, 1, 8, 8)
    f = Fade(20, source="digits")
    st = f.sample_state(x.shape, torch.Generator().manual_seed(0))
    torch.testing.assert_close(f(x, 20, state=st), st["z"], atol=1e-4, rtol=0)
    g = GaussianNoise(20)
    st = g.sample_state(x.shape, torch.Generator().manual_seed(0))
    torch.testing.assert_close(g(x, 20, state=st), st["noise"], atol=2e-2, rtol=0)
    lvl = g.process.alpha_sigma(torch.tensor(0.5, dtype=torch.float64))  # t / T is the DDPM level
    expect = float(lvl[0]) * x + float(lvl[1]) * st["noise"]
    torch.testing.assert_close(g(x, 10, state=st), expect, atol=1e-6, rtol=0)


# --- samplers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_exact_restorer_recovers_x0(name):
    d = CASES[name]()
    x0 = batch_for(name)
    state = d.sample_state(x0.shape, torch.Generator().manual_seed(2))
    x_T = d(x0, d.num_steps, state=state)
    oracle = lambda x, t: x0  # noqa: E731
    for algorithm in COLD_SAMPLERS:
        out = cold_sample(oracle, d, x_T, sampler=algorithm, state=state)
        torch.testing.assert_close(out, x0, atol=1e-5, rtol=0)
    sev = [d.num_steps, d.num_steps // 2, 0]  # skipping severities works too
    torch.testing.assert_close(improved(oracle, d, x_T, severities=sev, state=state), x0, atol=1e-5, rtol=0)


def test_callback_convention():
    d = Blur(5, 3, 1.0)
    x0 = smooth_images(2, 1, 8, 8)
    seen = []
    naive(lambda x, t: x0, d, d(x0, 5), callback=seen.append)
    assert [c["step"] for c in seen] == [5, 4, 3, 2, 1] and [c["i"] for c in seen] == list(range(5))
    assert set(seen[0]) == {"i", "t", "step", "x", "x0_hat"} and seen[0]["t"] == 1.0
    seen.clear()
    direct(lambda x, t: x0, d, d(x0, 5), callback=seen.append)
    assert len(seen) == 1


class Shift(Degradation):
    """The paper's model case D(x, s) = x + s v (sec. 3.3): linear in s, v independent of x."""

    name = "shift"

    def __init__(self, num_steps: int = 10):
        super().__init__(num_steps)
        self.v = smooth_images(1, 1, 8, 8, seed=5)

    def apply(self, x0, t, state):
        return x0 + t.to(x0)[:, None, None, None] * self.v


def test_algorithm2_is_exact_for_additive_degradations_whatever_the_restorer():
    """Sec. 3.3: for D(x, s) = x + s v, x_{s-1} = x_s - (x0_hat + s v) + (x0_hat + (s-1) v)
    = D(x0, s - 1) for any x0_hat, so Algorithm 2 returns x0 even with a useless restorer."""
    d = Shift()
    x0 = smooth_images(2, 1, 8, 8)
    g = torch.Generator().manual_seed(0)
    junk = lambda x, t: torch.randn(x.shape, generator=g)  # noqa: E731
    torch.testing.assert_close(improved(junk, d, d(x0, 10)), x0, atol=1e-5, rtol=0)
    assert (naive(junk, d, d(x0, 10)) - x0).abs().mean() > 0.5


def test_algorithm2_cancels_a_smooth_restoration_error_on_blur():
    """A restorer off by a smooth error e (x0_hat = x0 + e). For the (linear) blur D(x, s) = A_s x:

    * Algorithm 1's next state carries the full error: x_{s-1} - D(x0, s-1) = A_{s-1} e;
    * Algorithm 2's carries only (A_{s-1} - A_s) e = A_{s-1} (I - G_s) e: one more blur step barely
      changes a smooth e, so the error cancels to first order (Bansal et al. 2022, sec. 3.3);
    * summed over all steps it telescopes: Algorithm 2 ends at x0 + e - A_T e, Algorithm 1 at x0 + e.
    """
    d = Blur(10, 5, 1.0)  # mild blur: its per-step change of smooth images is small
    x0 = smooth_images(3, 1, 16, 16)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    e = 0.15 + 0.1 * torch.cos(2 * torch.pi * xx / 16) + 0.05 * torch.sin(2 * torch.pi * yy / 16)
    e = e.expand_as(x0)
    restore = lambda x, t: x0 + e  # noqa: E731

    # One step from the true x_s: the error each update leaves in x_{s-1}.
    for s in range(1, 11):
        x_s = d(x0, s)
        err1 = d(x0 + e, s - 1) - d(x0, s - 1)
        err2 = (x_s - d(x0 + e, s) + d(x0 + e, s - 1)) - d(x0, s - 1)
        assert err2.norm() < 0.1 * err1.norm()

    x_T = d(x0, 10)
    out1, out2 = naive(restore, d, x_T), improved(restore, d, x_T)
    torch.testing.assert_close(out1 - x0, e, atol=1e-5, rtol=0)
    torch.testing.assert_close(out2 - x0, e - d(e, 10), atol=1e-5, rtol=0)  # the telescoped sum
    assert (out2 - x0).norm() < 0.3 * (out1 - x0).norm()


# --- generation ----------------------------------------------------------------------------------


def test_gmm_generation_finite_deterministic_and_serialisable(digits):
    blur = Blur(8, 5, 2.0, mean_at_end=True)
    prior = GaussianMixturePrior.fit(blur, digits[:300], n_components=2, seed=0)
    assert prior.means.shape == (2, 1)  # blur: a mixture over the channel means
    restore = lambda x, t: torch.tanh(2 * x + 0.01 * t.to(x)[:, None, None, None])  # noqa: E731
    gen = lambda seed, p=prior: generate(restore, blur, 6, prior=p,  # noqa: E731
                                         generator=torch.Generator().manual_seed(seed))
    a, b, c = gen(0), gen(0), gen(1)
    assert a.shape == (6, 1, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    again = GaussianMixturePrior.from_json(prior.to_json())  # JSON, no pickle
    assert torch.equal(gen(0, again), a)
    assert make_degradation(again.degradation) == blur
    # The start is the mixture's draw plus the symmetry-breaking noise (std 0.002).
    starts = []
    generate(restore, blur, 6, prior=prior, generator=torch.Generator().manual_seed(0),
             callback=lambda c: starts.append(c["x"]) if c["i"] == 0 else None)
    x_T = prior.sample(6, blur, torch.Generator().manual_seed(0))
    assert 0 < (starts[0] - x_T).std() < 0.01

    pix = Pixelate(2)  # a mixture over the block means
    p2 = GaussianMixturePrior.fit(pix, digits[:200])
    assert p2.means.shape == (1, 4) and p2.sample(3, pix).shape == (3, 1, 8, 8)


def test_generation_from_built_in_priors():
    restore = lambda x, t: x.clamp(-1, 1)  # noqa: E731
    for d in (GaussianNoise(10), Fade(10, source="digits")):
        out = generate(restore, d, 4, shape=(1, 8, 8), generator=torch.Generator().manual_seed(0))
        assert out.shape == (4, 1, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="blur has no built-in prior"):
        generate(restore, Blur(), 2, shape=(1, 8, 8))


# --- a tiny training run --------------------------------------------------------------------------


class TinyNet(torch.nn.Module):
    """net(x, noise_label, cond) with the severity as an extra input channel."""

    def __init__(self, c=1, width=32):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(c + 1, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, width, 3, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(width, c, 3, padding=1))

    def forward(self, x, label, cond=None):
        return self.body(torch.cat([x, (label / 1000)[:, None, None, None].expand_as(x[:, :1])], 1))


def test_tiny_restorer_learns_to_deblur(digits):
    """A few hundred L1 steps on 8 x 8 digits: the restorer beats the blurred input in RMSE."""
    torch.manual_seed(0)
    blur = Blur(4, 3, 1.0)
    train, test = digits[:1500], digits[1500:1700]
    restore = ColdRestorer(TinyNet(), blur, residual=True)
    opt = torch.optim.Adam(restore.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(len(train), (64,), generator=g)
        loss = cold_loss(restore, blur, train[idx], generator=g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        x_T = blur(test, 4)
        rmse = lambda a: float((a - test).square().mean().sqrt())  # noqa: E731
        assert rmse(direct(restore, blur, x_T)) < 0.8 * rmse(x_T)  # ~0.35 vs ~0.55
        assert rmse(improved(restore, blur, x_T)) < 0.8 * rmse(x_T)  # ~0.32
