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
from undiffuse.data.mnist_captions import SLANT_THRESHOLDS, DigitPrompt, measure_strokes, stroke_classes
from undiffuse.data.shapes import ShapeObject, ShapePrompt, render_shapes
from undiffuse.text.evaluate import evaluate_text_model, format_text_table
from undiffuse.metrics import adherence as adh
from undiffuse.metrics.fid import fid_from_features

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


def test_real_images_for_prompts_show_what_they_state(judge):
    prompts = shapes_prompts("seen", 40, seed=3) + shapes_prompts("heldout", 40, seed=3)
    prompts.append(ShapePrompt("a red circle and a blue square", (ShapeObject(0, 0), ShapeObject(2, 1))))
    a, b = judge.real_for(prompts, 0), judge.real_for(prompts, 1)
    assert a.shape == (81, 3, 32, 32) and not torch.equal(a, b)  # independent draws (jitter, unstated)
    assert torch.equal(a, judge.real_for(prompts, 0))  # seeded
    assert judge.score(a, prompts)["adherence"] > 0.85 and judge.score(b, prompts)["adherence"] > 0.85  # a small judge
    # The point of matching: a set of real images that follows the prompts is near the prompt-matched
    # reference, and far from random real images, whose prompt distribution is another.
    fa, fb = judge.features(a), judge.features(b)
    random_real = judge.features(load_shapes(81, seed=5, split="test").x)
    assert fid_from_features(fb, fa) < 0.25 * fid_from_features(random_real, fa)


def test_real_digits_for_prompts_match_the_stated_attributes():
    digit_judge = adh.DigitJudge(nn.Identity(), {"heldout_accuracy": 1.0})
    prompts = mnist_prompts(30, seed=1) + mnist_prompts(10, seed=1, strokes=False)
    a, b = digit_judge.real_for(prompts, 0), digit_judge.real_for(prompts, 1)
    read = stroke_classes(a)
    stated = [(i, p) for i, p in enumerate(prompts) if p.thickness is not None]
    matched = sum(int(read["thickness"][i]) == p.thickness and int(read["slant"][i]) == p.slant for i, p in stated)
    assert matched >= 0.9 * len(stated)  # all but where that half has no such digit
    held = load_dataset("mnist").split(0.5, seed=0)[1]
    index = {tuple(x.flatten().tolist()): int(d) for x, d in zip(held.x, held.attributes["digit"])}
    assert [index[tuple(x.flatten().tolist())] for x in a] == [p.digit for p in prompts]
    assert not {tuple(x.flatten().tolist()) for x in a} & {tuple(x.flatten().tolist()) for x in b}  # disjoint halves
    with pytest.raises(ValueError, match="draw must be 0 or 1"):
        digit_judge.real_for(prompts, 2)


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
    # Measured == stored, away from the class boundaries: the loader measured all 5000 digits in one batch,
    # this measures 200, and batches of other sizes need not round alike, so a slant within 1e-4 of a
    # threshold may fall either side (the nearest of these 200 is 6e-4 away, so all are compared here).
    slant = measure_strokes(data.x)["slant"]
    clear = (slant[:, None] - torch.tensor(SLANT_THRESHOLDS)).abs().min(dim=1).values > 1e-4
    assert clear.float().mean() > 0.95
    assert torch.equal(stroke_classes(data.x)["slant"][clear], a["slant"][clear])


class OraclePipe:
    """Stands in for a text Pipeline: renders exactly what each shapes prompt states (guidance >= 1), or
    the picture of another prompt (guidance < 1), so adherence must be ~1 and ~0 respectively."""

    takes_prompts = True
    shape = (3, 32, 32)

    def __init__(self, prompts):
        self.by_text = {p.text: p for split in prompts.values() for p in split}
        self.calls = []

    def sample(self, n, spec):
        prompts, guidance, seed = spec.prompts, spec.guidance, spec.seed
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
                                 judge=judge, num_inference_steps=5, batch=20)
    assert set(result["scales"]) == {"0", "2"}
    good, bad = result["scales"]["2"], result["scales"]["0"]
    assert good["seen"]["adherence"] > 0.8 and good["heldout"]["adherence"] > 0.8
    assert bad["seen"]["adherence"] < 0.2
    assert good["seen"]["n"] == 36 and set(good["seen"]["per_attribute"]) >= {"colour", "shape", "size", "position"}
    assert set(good["seen"]["by_objects"]) == {"1", "2"} and min(good["seen"]["by_objects"].values()) > 0.7
    assert math.isfinite(good["fid"]) and math.isfinite(result["fid_floor"])
    assert good["fid"] < 3 * result["fid_floor"] + 5  # the oracle draws the prompts' own distribution
    assert result["real"]["adherence"] > 0.8
    assert all(n <= 20 for n, _, _ in pipe.calls)  # batched
    table = format_text_table(result)
    assert "adherence (heldout) [1 obj / 2 obj]" in table and "| 2 |" in table


def test_evaluate_text_model_refuses_class_models():
    class ClassPipe:
        takes_prompts = False

    with pytest.raises(ValueError, match="trained with --text"):
        evaluate_text_model(ClassPipe(), dataset="shapes")
    with pytest.raises(ValueError, match="no adherence judge"):
        adh.get_judge("cifar10")
    assert len(mnist_prompts(4)) == 4 and isinstance(shapes_prompts("seen", 1)[0], ShapePrompt)
