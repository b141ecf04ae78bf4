"""SampleSpec (one frozen description of a draw), the one pipeline interface and its capabilities,
and the conditioning module that turns a spec's labels or prompts into guidance."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import undiffuse
from undiffuse.conditioning import ClassLabels, TextPrompts, Unconditional
from undiffuse.guidance import ClassifierFreeGuidance, NullCondition
from undiffuse.pipeline import BasePipeline
from undiffuse.sampling import SampleSpec

import helpers_text  # noqa: F401  (registers the fake text encoder the text fixture was trained with)

OLD = Path(__file__).parent / "fixtures" / "old_runs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {name: undiffuse.load(shutil.copytree(OLD / name, root / name)) for name in ("gaussian", "edm", "cold", "text")}


def test_a_spec_is_frozen_hashable_and_normalised():
    spec = SampleSpec(class_labels=[1, 2], prompts=["a", "b"], options={"eta": 0.5})
    assert spec.class_labels == (1, 2) and spec.prompts == ("a", "b") and spec.sampler_options == {"eta": 0.5}
    assert hash(spec) == hash(SampleSpec(class_labels=(1, 2), prompts=("a", "b"), options=(("eta", 0.5),)))
    with pytest.raises(AttributeError, match="cannot assign"):
        spec.seed = 3
    assert SampleSpec(class_labels=torch.tensor([3, 4])).class_labels == (3, 4)
    assert SampleSpec(class_labels=torch.tensor(7)).class_labels == 7
    json.dumps(spec.to_dict())  # the web page and eval.json record it


def test_build_routes_fields_options_and_the_deprecated_name():
    base = SampleSpec(sampler="ddim", guidance=2.0)
    spec = SampleSpec.build(base, seed=4, eta=0.3, num_inference_steps=7)
    assert (spec.sampler, spec.guidance, spec.seed, spec.num_inference_steps) == ("ddim", 2.0, 4, 7)
    assert spec.sampler_options == {"eta": 0.3} and base.seed == 0  # the base is untouched
    with pytest.warns(FutureWarning, match="steps= is deprecated; use num_inference_steps="):
        assert SampleSpec.build(steps=9).num_inference_steps == 9
    assert spec.replace(seed=5) == SampleSpec.build(spec, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new names never warn
        SampleSpec.build(num_inference_steps=3, sampler="heun")


@pytest.mark.parametrize("changes, message", [
    (dict(num_inference_steps=0), "num_inference_steps must be"),
    (dict(guidance=float("nan")), "guidance"),
    (dict(guidance=1e6), "guidance"),
    (dict(classifier_scale=float("inf")), "classifier_scale"),
    (dict(options={"eta": float("nan")}), "sampler option eta"),
])
def test_impossible_settings_are_refused_when_the_spec_is_made(changes, message):
    with pytest.raises(ValueError, match=message):
        SampleSpec(**changes)


def test_one_interface_and_the_capabilities_of_each_kind_of_run(runs):
    gaussian, edm, cold, text = runs["gaussian"], runs["edm"], runs["cold"], runs["text"]
    assert all(isinstance(p, BasePipeline) for p in runs.values())
    assert (gaussian.takes_labels, gaussian.takes_prompts, gaussian.can_generate, gaussian.can_restore) == \
        (True, False, True, False)
    assert (edm.takes_labels, edm.takes_prompts) == (False, False)
    assert (text.takes_labels, text.takes_prompts) == (False, True)
    assert (cold.takes_labels, cold.can_generate, cold.can_restore) == (True, True, True)
    for pipe in runs.values():  # the same call, one spec, on every kind of run
        spec = SampleSpec(seed=3, num_inference_steps=2)
        x = pipe.sample(2, spec)
        assert x.shape == (2, 1, 8, 8) and torch.equal(x, pipe.sample(2, spec))
        assert not torch.equal(x, pipe.sample(2, spec.replace(seed=4)))


def test_a_spec_goes_down_intact(runs):
    pipe = runs["gaussian"]
    spec = SampleSpec(sampler="ddim", num_inference_steps=3, class_labels=[1, 2], guidance=2.0, seed=1)
    assert torch.equal(pipe.sample(2, spec), pipe.sample(2, sampler="ddim", num_inference_steps=3,
                                                         class_labels=[1, 2], guidance=2.0, seed=1))
    res = pipe.sample(2, spec, trajectory=True)
    assert len(res.xs) == len(res.x0_hats) == len(res.ts) == 3 and res.ts[0] > res.ts[-1]


def test_conditioning_refuses_what_a_model_cannot_take(runs):
    with pytest.raises(ValueError, match="unconditional: it takes no class labels"):
        runs["edm"].sample(2, class_labels=1)
    with pytest.raises(ValueError, match="not text-conditional"):
        runs["gaussian"].sample(2, prompts="a seven")
    with pytest.raises(ValueError, match="takes prompts, not class labels"):
        runs["text"].sample(2, class_labels=1)
    with pytest.raises(ValueError, match="guidance needs a class-conditional model"):
        runs["edm"].sample(2, guidance=2.0)
    with pytest.raises(ValueError, match="classifier guidance applies to Gaussian runs"):
        runs["cold"].sample(2, class_labels=1, classifier_scale=1.0)
    with pytest.raises(ValueError, match="negative prompt"):
        runs["text"].sample(2, prompts="the digit 3", negative_prompt="the digit 4")


def test_guidance_wrappers_are_shared_by_gaussian_and_cold_models(runs):
    for name in ("gaussian", "cold"):
        cond = runs[name].conditioning
        assert isinstance(cond, ClassLabels) and cond.num_classes == 10
        model = runs[name].model
        assert isinstance(cond.guided(model, SampleSpec(class_labels=1, guidance=3.0), None), ClassifierFreeGuidance)
        assert isinstance(cond.guided(model, SampleSpec(class_labels=1, guidance=0.0), None), NullCondition)
        assert cond.guided(model, SampleSpec(class_labels=1), None) is model
    assert isinstance(runs["edm"].conditioning, Unconditional) and isinstance(runs["text"].conditioning, TextPrompts)


def test_cold_guidance_is_the_formula_on_x0(runs):
    # x0_null + w (x0_cond - x0_null), with the two passes batched: checked against two plain calls.
    pipe = runs["cold"]
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.full((3,), 4)
    labels = torch.tensor([1, 5, 9])
    with torch.no_grad():
        cond, null = pipe.restorer(x, t, labels), pipe.restorer(x, t, torch.full((3,), 10))
        guided = pipe.restore_fn(SampleSpec(class_labels=labels, guidance=2.5), 3)(x, t)
    torch.testing.assert_close(guided, null + 2.5 * (cond - null), rtol=0, atol=1e-5)


def test_old_names_still_work_with_a_warning(runs):
    cold = runs["cold"]
    x_t = cold.degrade(torch.zeros(2, 1, 8, 8))
    with pytest.warns(FutureWarning, match="algorithm= is deprecated; use sampler="):
        old = cold.restore(x_t, algorithm="direct")
    assert torch.equal(old, cold.restore(x_t, sampler="direct"))
    with pytest.warns(FutureWarning, match="steps= is deprecated"):
        old = runs["gaussian"].sample(2, steps=3, seed=1)
    assert torch.equal(old, runs["gaussian"].sample(2, num_inference_steps=3, seed=1))


@pytest.mark.parametrize("command, old, new, dest", [
    ("sample", "--steps", "--num-inference-steps", "num_inference_steps"),
    ("sample", "--schedule", "--spacing", "spacing"),
    ("eval", "--steps", "--num-inference-steps", "num_inference_steps"),
    ("degrade", "--steps", "--max-severity", "max_severity"),
])
def test_old_sampling_flags_still_parse_with_a_warning(command, old, new, dest):
    from undiffuse.cli import build_parser

    required = {"sample": ["--run", "r"], "eval": ["--run", "r"], "degrade": ["mnist", "--process", "blur"]}[command]
    value = "karras" if dest == "spacing" else "7"
    with pytest.warns(FutureWarning, match=f"{old} is deprecated.*{new}"):
        args = build_parser().parse_args([command, *required, old, value])
    assert getattr(args, dest) == getattr(build_parser().parse_args([command, *required, new, value]), dest)


def test_a_degradation_spec_names_its_severities_T():
    from undiffuse.cold import make_degradation

    with pytest.warns(FutureWarning, match="blur:steps= is deprecated; write blur:T="):
        old = make_degradation("blur:steps=7")
    assert old.config() == make_degradation("blur:T=7").config() == make_degradation("blur:7").config()
