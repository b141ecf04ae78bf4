"""Tests for the notebook API: ``undiffuse.train`` / ``undiffuse.load`` and ``Pipeline.sample``.

Two tiny runs are trained once per module through ``undiffuse.train``: a class-conditional "tiny"
U-Net on the 8x8 digits, and an unconditional MLP on the 2-D swiss roll.
"""
from __future__ import annotations

import json

import pytest
import torch

import undiffuse
from undiffuse import Pipeline, TrainConfig
from undiffuse.pipeline import SampleResult


@pytest.fixture(scope="module")
def digits_pipe(tmp_path_factory) -> Pipeline:
    out = tmp_path_factory.mktemp("digits")
    cfg = TrainConfig(data="digits", net="tiny", max_train_steps=6, batch_size=16, lr=2e-3, warmup_steps=1,
                      sample_every=0, num_samples=4, sample_steps=2, out=str(out))
    return undiffuse.train(cfg, progress=False)


@pytest.fixture(scope="module")
def toy_pipe(tmp_path_factory) -> Pipeline:
    out = tmp_path_factory.mktemp("toy")
    return undiffuse.train(undiffuse.preset("toy2d"), progress=False, net={"type": "mlp", "hidden": 32,
                           "num_blocks": 1}, max_train_steps=5, num_samples=32, sample_steps=2, out=str(out))


def test_undiffuse_train_stays_callable_after_the_train_module_is_imported():
    # Regression: importing the submodule undiffuse.train (as the CLI and train() itself do) used
    # to rebind the package attribute, so a second `undiffuse.train(...)` raised "'module' object
    # is not callable".
    import undiffuse.cli  # noqa: F401
    from undiffuse.trainer import Trainer  # noqa: F401
    assert undiffuse.train is undiffuse.api.train and callable(undiffuse.train)


def test_train_returns_a_loaded_pipeline(digits_pipe, toy_pipe):
    assert isinstance(digits_pipe, Pipeline) and digits_pipe.run_dir.is_dir()
    assert digits_pipe.shape == (1, 8, 8) and digits_pipe.num_classes == 10
    assert digits_pipe.class_names == [str(d) for d in range(10)]
    assert not digits_pipe.denoiser.training  # eval mode: no dropout while sampling
    assert toy_pipe.shape == (2,) and toy_pipe.num_classes is None
    x = digits_pipe.sample(4, num_inference_steps=3)
    assert x.shape == (4, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1  # the predicted x0 is clipped to the data range
    assert toy_pipe.sample(7, num_inference_steps=3).shape == (7, 2)


@pytest.mark.parametrize("sampler, options", [("ddim", {}), ("ddim", {"eta": 1.0}), ("ddpm", {})])
def test_same_seed_same_samples_and_other_seeds_differ(digits_pipe, sampler, options):
    def draw(seed):
        return digits_pipe.sample(6, sampler=sampler, num_inference_steps=4, seed=seed, class_labels=2, **options)
    a, b, c = draw(0), draw(0), draw(1)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.isfinite(a).all()


def test_sampling_leaves_the_global_rng_alone(digits_pipe, toy_pipe):
    # Training resumes exactly only if grids drawn mid-run do not consume torch's global RNG.
    state = torch.get_rng_state()
    digits_pipe.sample(4, sampler="ddpm", num_inference_steps=3, seed=3)
    toy_pipe.sample(4, sampler="ddim", num_inference_steps=3, seed=3, eta=0.5)
    assert torch.equal(torch.get_rng_state(), state)


def test_class_labels_forms_and_effect(digits_pipe):
    def draw(labels):
        return digits_pipe.sample(4, num_inference_steps=3, seed=7, class_labels=labels)
    assert torch.equal(draw(5), draw([5, 5, 5, 5]))
    assert torch.equal(draw(torch.tensor([1, 2, 3, 4])), draw([1, 2, 3, 4]))
    assert torch.equal(draw(None), draw(10))  # None is the null class of a conditional model
    assert not torch.allclose(draw(0), draw(1))  # the label reaches the network


@pytest.mark.parametrize("labels, needle", [
    ([1, 2, 3], r"class labels must be 4 values in 0\.\.9 \(or 10 for unconditional\), got \[1, 2, 3\]"),
    (-1, r"got \[-1, -1, -1, -1\]"),
    (11, r"class labels must be 4 values in 0\.\.9"),
    ([0, 1, 2, 12], r"got \[0, 1, 2, 12\]"),
])
def test_invalid_class_labels_are_refused(digits_pipe, labels, needle):
    with pytest.raises(ValueError, match=needle):
        digits_pipe.sample(4, num_inference_steps=2, class_labels=labels)


def test_unconditional_models_take_no_labels_and_no_guidance(toy_pipe):
    with pytest.raises(ValueError, match="unconditional: it takes no class labels"):
        toy_pipe.sample(4, num_inference_steps=2, class_labels=0)
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        toy_pipe.sample(4, num_inference_steps=2, guidance=3.0)


def test_guidance(digits_pipe):
    plain = digits_pipe.sample(4, num_inference_steps=3, seed=2, class_labels=[0, 1, 2, 3])
    assert torch.equal(digits_pipe.sample(4, num_inference_steps=3, seed=2, class_labels=[0, 1, 2, 3], guidance=1.0), plain)
    guided = digits_pipe.sample(4, num_inference_steps=3, seed=2, class_labels=[0, 1, 2, 3], guidance=3.0)
    assert guided.shape == plain.shape and not torch.allclose(guided, plain)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [1, 4])
def test_trajectory_has_one_entry_per_step(digits_pipe, sampler, steps):
    res = digits_pipe.sample(3, sampler=sampler, num_inference_steps=steps, seed=4, class_labels=1, trajectory=True)
    assert isinstance(res, SampleResult)
    assert len(res.xs) == len(res.x0_hats) == len(res.ts) == steps
    assert all(x.shape == (3, 1, 8, 8) for x in res.xs + res.x0_hats)
    assert res.ts[0] == 1.0 and res.ts[-1] > 0 and all(a > b for a, b in zip(res.ts, res.ts[1:]))
    # The first state is the prior draw, and the final samples are those of a plain call.
    prior = digits_pipe.process.prior((3, 1, 8, 8), torch.Generator().manual_seed(4))
    assert torch.equal(res.xs[0], prior)
    plain = digits_pipe.sample(3, sampler=sampler, num_inference_steps=steps, seed=4, class_labels=1)
    assert torch.equal(res.x0, plain)
    assert torch.equal(res.x0_hats[-1].clamp(-1, 1), plain)  # the last step returns x0_hat


def test_bad_sampler_and_steps_are_refused(digits_pipe):
    with pytest.raises(ValueError, match=r"unknown sampler 'hoen'; choose one of \['ddim', 'ddpm', "):
        digits_pipe.sample(2, sampler="hoen")
    with pytest.raises(ValueError, match="dpmpp_2m has no option eta"):
        digits_pipe.sample(2, sampler="dpmpp_2m", eta=0.5)
    with pytest.raises(FileNotFoundError, match="classifier guidance needs a classifier in"):
        digits_pipe.sample(2, class_labels=3, classifier_scale=1.0)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        digits_pipe.sample(2, num_inference_steps=0)
    with pytest.raises(ValueError, match="only 1000"):
        digits_pipe.sample(2, num_inference_steps=1001)


def test_load_errors(tmp_path, digits_pipe):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        undiffuse.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match=r"config\.json is missing"):
        undiffuse.load(tmp_path)
    (tmp_path / "config.json").write_text((digits_pipe.run_dir / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no checkpoint yet"):
        undiffuse.load(tmp_path)


def test_train_with_resume_continues_the_run(tmp_path):
    cfg = undiffuse.preset("toy2d").updated(net={"type": "mlp", "hidden": 32, "num_blocks": 1}, max_train_steps=3,
                                            num_samples=16, sample_steps=2, out=str(tmp_path), log_every=1)
    undiffuse.train(cfg, progress=False)
    pipe = undiffuse.train(cfg, resume=True, progress=False, max_train_steps=5)
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step-00000005"
    assert pipe.sample(4, num_inference_steps=2).shape == (4, 2)


def test_a_callback_sees_every_step_and_can_stop_the_draw(digits_pipe):
    # The web page follows a draw through callback= (x_t and x0_hat each step) and cancels it by raising.
    seen = []
    x = digits_pipe.sample(2, sampler="ddim", num_inference_steps=4, callback=lambda d: seen.append(d["i"]))
    assert seen == [0, 1, 2, 3]
    assert torch.equal(x, digits_pipe.sample(2, sampler="ddim", num_inference_steps=4))
    res = digits_pipe.sample(2, sampler="ddim", num_inference_steps=4, trajectory=True,
                             callback=lambda d: seen.append(d["x0_hat"].shape))
    assert len(res.xs) == 4 and seen[4:] == [res.x0_hats[0].shape] * 4 and torch.equal(res.x0, x)

    def stop(d):
        raise InterruptedError("cancelled at step %d" % d["i"])

    with pytest.raises(InterruptedError, match="cancelled at step 0"):
        digits_pipe.sample(2, num_inference_steps=4, callback=stop)
