"""Captioned data: MNIST captions with measured strokes, the procedural shapes, caption folders."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.data import DataError, TensorData, load_dataset, load_shapes, shapes_prompts
from undiffuse.data import mnist_captions as mc
from undiffuse.data import shapes as sh


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.fixture(scope="module")
def shapes():
    return load_shapes(2000, seed=0)


# ----------------------------------------------------------------------------- TensorData

def test_subsets_carry_captions_and_attributes(mnist):
    rest, held = mnist.split(0.2, seed=1)
    for part in (rest, held, mnist.subsample(50, seed=2)):
        assert len(part.captions) == len(part)
        assert set(part.attributes) == {"digit", "thickness", "slant"}
        assert torch.equal(part.attributes["digit"], part.labels)
    index = torch.tensor([4999, 0, 2500])
    sub = mnist.select(index)
    assert sub.captions == [mnist.captions[i] for i in index]
    assert torch.equal(sub.attributes["slant"], mnist.attributes["slant"][index])
    with pytest.raises(DataError, match="2 captions for 3 items"):
        TensorData(torch.zeros(3, 1, 4, 4), None, None, "t", captions=["a", "b"])
    with pytest.raises(DataError, match="attribute 'size'"):
        TensorData(torch.zeros(3, 1, 4, 4), None, None, "t", attributes={"size": torch.zeros(2)})


# ----------------------------------------------------------------------------- MNIST

def test_mnist_captions_name_the_digit_and_measured_strokes(mnist):
    words = {w: d for d, w in enumerate(mc.DIGIT_WORDS)}
    thick, slant = mnist.attributes["thickness"], mnist.attributes["slant"]
    for i in range(0, len(mnist), 97):
        cap, digit = mnist.captions[i], int(mnist.labels[i])
        tokens = re.findall(r"[a-z]+(?:-[a-z]+)?|\d", cap)
        named = [words.get(t, int(t) if t.isdigit() else None) for t in tokens]
        assert [d for d in named if d is not None] == [digit], cap
        for j, name in enumerate(mc.THICKNESS_NAMES):
            assert (name in tokens) <= (thick[i] == j), cap
        for j, name in enumerate(mc.SLANT_NAMES):
            assert (name in tokens) <= (slant[i] == j), cap
    assert len(set(mnist.captions)) > 300  # varied, not one caption per digit
    assert load_dataset("mnist").captions == mnist.captions  # seeded: fixed per digit


def test_mnist_measured_strokes_are_sane(mnist):
    ink = ((mnist.x + 1) / 2).sum(dim=(1, 2, 3))
    thick = mnist.attributes["thickness"]
    assert ink[thick == 2].mean() > 1.3 * ink[thick == 0].mean()  # thick digits carry more ink
    assert all(0.25 < (thick == k).float().mean() < 0.42 for k in range(3))  # terciles
    # A digit sheared to lean right (grid_sample reads the input at x + 0.3 y, y down) measures more
    # slant; a dilated one more thickness.
    x = mnist.x[:200]
    theta = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0]]).expand(len(x), 2, 3)
    sheared = torch.nn.functional.grid_sample(x, torch.nn.functional.affine_grid(theta, x.shape, align_corners=False),
                                              padding_mode="border", align_corners=False)
    before, after = mc.measure_strokes(x), mc.measure_strokes(sheared)
    assert (after["slant"] > before["slant"] + 0.15).float().mean() > 0.95
    dilated = torch.nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    assert (mc.measure_strokes(dilated)["thickness"] > before["thickness"]).all()


def test_mnist_prompts_state_attributes():
    prompts = mc.mnist_prompts(30, seed=3)
    assert [p.digit for p in prompts[:10]] == list(range(10))
    p = prompts[7]
    assert p.text == f"a {mc.THICKNESS_NAMES[p.thickness]}, {mc.SLANT_NAMES[p.slant]} seven"
    assert set(p.stated()) == {"digit", "thickness", "slant"}
    assert mc.mnist_prompts(30, seed=3) == prompts
    assert mc.mnist_prompts(5, strokes=False)[2].stated() == {"digit": 2}


# ----------------------------------------------------------------------------- shapes

def test_shapes_deterministic_and_in_range(shapes):
    again = load_shapes(2000, seed=0)
    assert torch.equal(again.x, shapes.x) and again.captions == shapes.captions
    other = load_shapes(2000, seed=1)
    assert not torch.equal(other.x, shapes.x)
    assert shapes.x.shape == (2000, 3, 32, 32) and shapes.x.min() >= -1 and shapes.x.max() <= 1
    assert torch.equal(shapes.labels, shapes.attributes["shape"][:, 0])
    count = shapes.attributes["count"]
    assert 0.4 < (count == 2).float().mean() < 0.6
    assert (shapes.attributes["colour"][count == 1, 1] == -1).all()


def _parse(caption):
    """(colour, shape, size | None, position | None) per object phrase of a shapes caption."""
    out = []
    for phrase in caption.split(" and "):
        m = re.fullmatch(r"a (?:(small|large) )?(\w+) (\w+)(?: (?:at|on|in) the (.+))?", phrase)
        assert m, phrase
        size, colour, shape, where = m.groups()
        out.append((sh.COLOUR_NAMES.index(colour), sh.SHAPE_NAMES.index(shape),
                    None if size is None else sh.SIZE_NAMES.index(size),
                    None if where is None else sh.POSITION_NAMES.index(where)))
    return out


def test_shapes_captions_match_the_pixels(shapes):
    """Every stated object is found in the attributes, and at its cell centre the pixel has its colour."""
    a = shapes.attributes
    for i in range(0, len(shapes), 7):
        count = int(a["count"][i])
        stated = _parse(shapes.captions[i])
        assert len(stated) == count
        actual = [(int(a["colour"][i, s]), int(a["shape"][i, s]), int(a["size"][i, s]), int(a["position"][i, s]))
                  for s in range(count)]
        for obj in stated:
            matches = [all(o is None or o == v for o, v in zip(obj, act)) for act in actual]
            assert any(matches), (shapes.captions[i], actual)
        for colour, shape, size, pos in actual:
            row, col = divmod(pos, 3)
            cy, cx = int((row + 0.5) * 32 / 3), int((col + 0.5) * 32 / 3)
            pixel = (shapes.x[i, :, cy, cx] + 1) / 2
            assert torch.allclose(pixel, sh.COLOURS[colour], atol=0.05), (shapes.captions[i], pixel)
        empty = set(range(9)) - {p for *_, p in actual}
        for pos in empty:  # empty cells are black at their centre
            row, col = divmod(pos, 3)
            assert (shapes.x[i, :, int((row + 0.5) * 32 / 3), int((col + 0.5) * 32 / 3)] == -1).all()


def test_heldout_pairs_absent_from_training(shapes):
    train = load_dataset("shapes")
    assert len(train) == sh.DEFAULT_SIZE
    table = sh._heldout_table()
    colour, shape = train.attributes["colour"], train.attributes["shape"]
    present = colour >= 0
    assert not table[colour[present], shape[present]].any()
    for pair in sh.HELDOUT_PAIRS:
        assert " ".join(pair) not in " ".join(train.captions)
    test = load_shapes(2000, split="test")
    present = test.attributes["colour"] >= 0
    assert table[test.attributes["colour"][present], test.attributes["shape"][present]].float().mean() > 0.1
    assert not torch.equal(test.x[:10], shapes.x[:10])


def test_shapes_prompts():
    seen, held = shapes_prompts("seen", 40, seed=0), shapes_prompts("heldout", 40, seed=0)
    assert all(not o.is_heldout() for p in seen for o in p.objects)
    assert all(sum(o.is_heldout() for o in p.objects) == 1 for p in held)
    for p in seen + held:
        assert _parse(p.text) == [(o.colour, o.shape, o.size, o.position) for o in p.objects]
        assert len({o.position for o in p.objects}) == len(p.objects)
    assert shapes_prompts("seen", 40, seed=0) == seen
    assert any(len(p.objects) == 2 for p in seen) and any(len(p.objects) == 1 for p in seen)
    with pytest.raises(ValueError, match="'seen' or 'heldout'"):
        shapes_prompts("unseen")


def test_shapes_options():
    grey = load_dataset("shapes", image_size=16, channels=1, n=100)
    assert grey.x.shape == (100, 1, 16, 16) and len(grey.captions) == 100


# ----------------------------------------------------------------------------- folders

def _write_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        Image.fromarray(np.full((8, 8, 3), 40 * k, dtype=np.uint8)).save(folder / name)


def test_txt_captions(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "a.txt").write_text("a dark\n  square ")
    (tmp_path / "b.txt").write_text("a lighter square")
    data = load_dataset(str(tmp_path), image_size=8, captions=True)
    assert data.captions == ["a dark square", "a lighter square"]
    assert load_dataset(str(tmp_path), image_size=8).captions is None  # captions only when asked


def test_metadata_jsonl_captions(tmp_path):
    _write_images(tmp_path / "train", ["x.png", "y.png"])
    (tmp_path / "b.txt").write_text("ignored: metadata.jsonl takes precedence")
    lines = [{"file_name": "train/y.png", "text": "the second"}, {"file_name": "train/x.png", "text": "the first"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    data = load_dataset(str(tmp_path), image_size=8, captions=True)
    assert data.captions == ["the first", "the second"]
    half = load_dataset(str(tmp_path), image_size=8, captions=True, n=1, seed=0)
    assert len(half.captions) == 1 and half.captions[0] in ("the first", "the second")


def test_missing_captions_error_warn_skip(tmp_path):
    _write_images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "a.txt").write_text("a caption")
    (tmp_path / "b.txt").write_text("   ")
    with pytest.raises(DataError, match=r"2 of 3 images .* b\.png, c\.png.*on_missing_caption='warn'"):
        load_dataset(str(tmp_path), image_size=8, captions=True)
    with pytest.warns(UserWarning, match="2 of 3 images .* kept with the empty caption"):
        kept = load_dataset(str(tmp_path), image_size=8, captions=True, on_missing_caption="warn")
    assert kept.captions == ["a caption", "", ""]
    with pytest.warns(UserWarning, match="2 of 3 images .* left out"):
        skipped = load_dataset(str(tmp_path), image_size=8, captions=True, on_missing_caption="skip")
    assert skipped.captions == ["a caption"] and len(skipped) == 1
    with pytest.raises(DataError, match="on_missing_caption must be one of"):
        load_dataset(str(tmp_path), image_size=8, captions=True, on_missing_caption="ignore")


def test_bad_metadata_lines_are_named(tmp_path):
    _write_images(tmp_path, ["x.png"])
    meta = tmp_path / "metadata.jsonl"
    cases = [('{"file_name": "x.png", "text": "ok"}\n{"file_name": "x.png", "text": ', "line 2 is not valid JSON"),
             ('{"file_name": "x.png", "caption": "wrong column"}', "line 1 needs the keys 'file_name' and 'text'"),
             ('{"file_name": "nope.png", "text": "a"}', "line 1 names 'nope.png', but there is no such image"),
             ('{"file_name": "x.png", "text": "a"}\n{"file_name": "x.png", "text": "b"}',
              "line 2 gives a second caption"),
             ('{"file_name": "x.png", "text": 3}', "'text' must be a string")]
    for content, message in cases:
        meta.write_text(content)
        with pytest.raises(DataError, match=re.escape(message)):
            load_dataset(str(tmp_path), image_size=8, captions=True)
    meta.write_text('{"file_name": "x.png", "caption": "other column"}')
    other = load_dataset(str(tmp_path), image_size=8, captions=True, caption_column="caption")
    assert other.captions == ["other column"]
