"""The prompt-adherence judges and the text-model evaluation, on real images and stand-in pipelines.

Real images scored against prompts that state what they show must score high; the same images
against another image's prompt must score low. The shapes judge trains on a small recipe (about 15 s
on one thread) into a temporary cache.
"""
import math

import pytest
import torch
from torch import nn

from undiffuse.data import load_dataset, load_shapes, mnist_prompts, shapes_prompts
from undiffuse.data.mnist_captions import DigitPrompt, stroke_classes
from undiffuse.data.shapes import ShapeObject, ShapePrompt, render_shapes
from undiffuse.evaluate_text import evaluate_text_model, format_text_table
from undiffuse.metrics import adherence as adh

TINY = {"n_train": 3000, "epochs": 8, "seed": 0}


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    cache = tmp_path_factory.mktemp("judge")
    j = adh.get_judge("shapes", cache, **TINY)
    j.cache = cache
    return j


def test_judge_is_accurate_on_real_images_and_cached(judge, monkeypatch):
    acc = judge.info["heldout_accuracy"]
    assert acc["occupied"] > 0.99 and min(acc["colour"], acc["shape"], acc["size"]) > 0.9
    files = sorted(p.name for p in next(judge.cache.iterdir()).iterdir())
    assert files == ["info.json", "model.safetensors"]
    monkeypatch.setattr(adh, "train_shapes_net", lambda **kw: pytest.fail("retrained instead of reusing"))
    again = adh.get_judge("shapes", judge.cache, **TINY)
    x = load_shapes(50, split="test").x
    assert torch.equal(again.features(x), judge.features(x))


def test_real_images_adhere_and_mismatched_captions_do_not(judge):
    x, prompts = judge.real_reference(300, seed=1)
    real = judge.score(x, prompts)
    assert real["adherence"] > 0.8
    assert all(v > 0.9 for v in real["per_attribute"].values()), real["per_attribute"]
    shuffled = judge.score(x, prompts[1:] + prompts[:1])
    assert shuffled["adherence"] < 0.1
    assert shuffled["per_attribute"]["colour"] < 0.4 and shuffled["per_attribute"]["position"] < 0.4
    with pytest.raises(ValueError, match="one prompt per image"):
        judge.score(x[:3], prompts[:2])


def _cells(objects):
    """A perfect read of an image holding ``objects`` (fully stated ShapeObjects)."""
    occ = torch.zeros(1, 9, dtype=torch.bool)
    out = {"occupied": occ, **{k: torch.full((1, 9), -1) for k in adh.ATTRIBUTES}}
    for o in objects:
        occ[0, o.position] = True
        for k in adh.ATTRIBUTES:
            out[k][0, o.position] = getattr(o, k)
    return out


def test_two_object_matching_rules():
    red_circle, blue_square = ShapeObject(0, 0, 0, 0), ShapeObject(2, 1, 1, 8)
    cells = _cells([red_circle, blue_square])
    ok = lambda objs: all(all(v) for v in adh._score_objects(cells, 0, objs).values())  # noqa: E731
    assert ok([blue_square, red_circle])  # order of mention does not matter
    assert ok([ShapeObject(2, 1), ShapeObject(0, 0)])  # unstated size / position: any cell may match
    assert not ok([red_circle])  # an extra object: the count is wrong
    assert not ok([ShapeObject(0, 0, 0, 8), ShapeObject(2, 1, 1, 0)])  # positions swapped
    checks = adh._score_objects(cells, 0, [ShapeObject(0, 0, 1, 0), blue_square])
    assert checks["size"] == [False, True] and checks["colour"] == [True, True]
    # Two unpositioned objects with the same description cannot both claim one cell.
    assert not ok([ShapeObject(0, 0), ShapeObject(0, 0)])


class NearestDigit(nn.Module):
    """A 'classifier' that labels an image with the label of the nearest reference digit."""

    def __init__(self, x, labels):
        super().__init__()
        self.register_buffer("ref", x.flatten(1))
        self.labels = labels
        self.unused = nn.Parameter(torch.zeros(1))  # predict_labels reads the device off a parameter

    def forward(self, x):
        nearest = torch.cdist(x.flatten(1), self.ref).argmin(dim=1)
        return nn.functional.one_hot(self.labels[nearest], 10).float()


def test_digit_judge_measures_strokes():
    data = load_dataset("mnist").subsample(200, seed=0)
    judge = adh.DigitJudge(NearestDigit(data.x, data.labels), {"heldout_accuracy": 1.0})
    a = data.attributes
    prompts = [DigitPrompt("", d, t, s) for d, t, s in zip(a["digit"].tolist(), a["thickness"].tolist(),
                                                          a["slant"].tolist())]
    assert judge.score(data.x, prompts)["adherence"] == 1.0
    wrong_thickness = [DigitPrompt("", p.digit, (p.thickness + 1) % 3, p.slant) for p in prompts]
    score = judge.score(data.x, wrong_thickness)
    assert score["adherence"] == 0.0 and score["per_attribute"]["digit"] == 1.0
    digit_only = [DigitPrompt("", p.digit) for p in prompts]
    assert judge.score(data.x, digit_only)["per_attribute"] == {"digit": 1.0}
    assert judge.score(data.x, digit_only[1:] + digit_only[:1])["adherence"] < 0.3
    assert torch.equal(stroke_classes(data.x)["slant"], a["slant"])  # measured == stored


class OraclePipe:
    """Stands in for a text Pipeline: renders exactly what each shapes prompt states (guidance >= 1), or
    the picture of another prompt (guidance < 1), so adherence must be ~1 and ~0 respectively."""

    is_text = True

    def __init__(self, prompts):
        self.by_text = {p.text: p for split in prompts.values() for p in split}
        self.calls = []

    def sample(self, n, *, prompts, guidance, sampler, steps, seed, **options):
        self.calls.append((n, guidance, seed))
        chosen = [self.by_text[t] for t in prompts]
        if guidance < 1:  # half a batch away: a prompt's repeats sit next to each other
            chosen = chosen[n // 2:] + chosen[:n // 2]
        attrs = {k: torch.full((n, 2), -1) for k in ("colour", "shape", "size", "position")}
        for i, p in enumerate(chosen):
            for s, o in enumerate(p.objects):
                for k in attrs:
                    attrs[k][i, s] = getattr(o, k)
        return render_shapes(attrs, torch.zeros(n, 2, 2))


def test_evaluate_text_model_with_an_oracle_pipeline(judge):
    prompts = {"seen": shapes_prompts("seen", 12, seed=0), "heldout": shapes_prompts("heldout", 12, seed=0)}
    pipe = OraclePipe(prompts)
    result = evaluate_text_model(pipe, prompts, guidance_scales=[0.0, 2.0], n_per_prompt=3, dataset="shapes",
                                 judge=judge, steps=5, batch=20)
    assert set(result["scales"]) == {"0", "2"}
    good, bad = result["scales"]["2"], result["scales"]["0"]
    assert good["seen"]["adherence"] > 0.8 and good["heldout"]["adherence"] > 0.8
    assert bad["seen"]["adherence"] < 0.2
    assert good["seen"]["n"] == 36 and set(good["seen"]["per_attribute"]) >= {"colour", "shape", "size", "position"}
    assert math.isfinite(good["fid"]) and math.isfinite(result["fid_floor"])
    assert result["real"]["adherence"] > 0.8
    assert all(n <= 20 for n, _, _ in pipe.calls)  # batched
    table = format_text_table(result)
    assert "adherence (heldout)" in table and "| 2 |" in table


def test_evaluate_text_model_refuses_class_models():
    class ClassPipe:
        is_text = False

    with pytest.raises(ValueError, match="trained with --text"):
        evaluate_text_model(ClassPipe(), dataset="shapes")
    with pytest.raises(ValueError, match="no adherence judge"):
        adh.get_judge("cifar10")
    assert len(mnist_prompts(4)) == 4 and isinstance(shapes_prompts("seen", 1)[0], ShapePrompt)
