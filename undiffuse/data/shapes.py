"""A procedural captioned dataset: one or two coloured shapes on a 32x32 black canvas.

Each object has a shape (circle, square, triangle, diamond), a colour (six named colours), a size
(small or large) and a position (one cell of a 3x3 grid, jittered by up to 0.75 px); two objects
never share a cell, so they never overlap. The caption states the objects in a seeded order, e.g.
"a small red circle at the top left and a large blue diamond in the center"; with probability 0.15
each, an object's size or position is left unsaid ("a red circle"), so short prompts are in
distribution too.

Compositional generalisation (in the spirit of CLEVR's CoGenT split, Johnson et al. 2017, sec. 4)
is tested with ``HELDOUT_PAIRS``: four colour x shape pairs that never occur in the training images
(every colour and shape still occurs, only not together). ``shapes_prompts("seen" | "heldout")``
gives evaluation prompts with their stated attributes.

Rendering is vectorised in torch: each shape is a signed distance field in pixels and its coverage
``clamp(0.5 - sdf, 0, 1)`` is a one-pixel box-filtered (anti-aliased) edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import DataError, TensorData, check_image_size, resize_images, set_channels

__all__ = ["SHAPE_NAMES", "COLOUR_NAMES", "COLOURS", "SIZE_NAMES", "POSITION_NAMES", "HELDOUT_PAIRS",
           "ShapeObject", "ShapePrompt", "load_shapes", "render_shapes", "render_prompts", "shapes_prompts",
           "caption_objects"]

SHAPE_NAMES = ["circle", "square", "triangle", "diamond"]
COLOUR_NAMES = ["red", "green", "blue", "yellow", "purple", "white"]
#: RGB in [0, 1], chosen far apart so a classifier (and a reader) never confuses two of them.
COLOURS = torch.tensor([[0.95, 0.15, 0.10], [0.15, 0.80, 0.15], [0.15, 0.35, 1.00],
                        [0.95, 0.90, 0.10], [0.65, 0.20, 0.90], [0.95, 0.95, 0.95]])
SIZE_NAMES = ["small", "large"]
#: Half-extent in pixels of each size (a large shape spans 9 px of its 10.7 px cell, a small one 6).
RADII = (3.0, 4.5)
POSITION_NAMES = ["top left", "top", "top right", "left", "center", "right", "bottom left", "bottom",
                  "bottom right"]
POSITION_PHRASES = ["at the top left", "at the top", "at the top right", "on the left", "in the center",
                    "on the right", "at the bottom left", "at the bottom", "at the bottom right"]
GRID = 3
IMAGE_SIZE = 32
JITTER = 0.75
#: (colour, shape) pairs absent from training: a Latin pattern, so each shape loses one colour.
HELDOUT_PAIRS = frozenset({("red", "square"), ("green", "triangle"), ("blue", "circle"), ("yellow", "diamond")})
DEFAULT_SIZE = 10000
TWO_OBJECT_PROBABILITY = 0.5
OMIT_PROBABILITY = 0.15
#: Seeds of the held-out real set are offset so it never repeats a training image's draws.
TEST_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class ShapeObject:
    """One object as indices into the name lists; ``size``/``position`` None means "not stated"."""

    colour: int
    shape: int
    size: int | None = None
    position: int | None = None

    def phrase(self) -> str:
        size = f"{SIZE_NAMES[self.size]} " if self.size is not None else ""
        where = f" {POSITION_PHRASES[self.position]}" if self.position is not None else ""
        return f"a {size}{COLOUR_NAMES[self.colour]} {SHAPE_NAMES[self.shape]}{where}"

    def is_heldout(self) -> bool:
        return (COLOUR_NAMES[self.colour], SHAPE_NAMES[self.shape]) in HELDOUT_PAIRS


@dataclass(frozen=True)
class ShapePrompt:
    """An evaluation prompt and the objects it states, in the order it states them."""

    text: str
    objects: tuple[ShapeObject, ...]


def caption_objects(objects: tuple[ShapeObject, ...] | list[ShapeObject]) -> str:
    """The caption of a list of objects: their phrases joined by "and"."""
    return " and ".join(o.phrase() for o in objects)


def _heldout_table() -> Tensor:
    """(colours, shapes) bool: True where the pair is held out."""
    table = torch.zeros(len(COLOUR_NAMES), len(SHAPE_NAMES), dtype=torch.bool)
    for colour, shape in HELDOUT_PAIRS:
        table[COLOUR_NAMES.index(colour), SHAPE_NAMES.index(shape)] = True
    return table


def _draw_attributes(n: int, rng: np.random.Generator, include_heldout: bool) -> dict[str, np.ndarray]:
    """Per-image object attributes, (n, 2) int64 with -1 where there is no second object."""
    count = 1 + (rng.random(n) < TWO_OBJECT_PROBABILITY)
    cells = np.argsort(rng.random((n, GRID * GRID)), axis=1)[:, :2]  # two distinct cells per image
    colour = rng.integers(len(COLOUR_NAMES), size=(n, 2))
    shape = rng.integers(len(SHAPE_NAMES), size=(n, 2))
    if not include_heldout:  # redraw held-out pairs until none is left (about 1 in 6 per round)
        held = _heldout_table().numpy()
        bad = held[colour, shape]
        while bad.any():
            colour[bad] = rng.integers(len(COLOUR_NAMES), size=int(bad.sum()))
            shape[bad] = rng.integers(len(SHAPE_NAMES), size=int(bad.sum()))
            bad = held[colour, shape]
    attrs = {"colour": colour, "shape": shape, "size": rng.integers(len(SIZE_NAMES), size=(n, 2)), "position": cells}
    second_absent = count == 1
    for value in attrs.values():
        value[second_absent, 1] = -1
    return {**attrs, "count": count.astype(np.int64)}


def _sdf(shape: int, dx: Tensor, dy: Tensor, r: Tensor) -> Tensor:
    """Signed distance in pixels (negative inside) from offsets (dx right, dy down) to a shape of half-extent r."""
    if shape == 0:  # circle
        return torch.sqrt(dx ** 2 + dy ** 2) - r
    if shape == 1:  # square: half-side 0.85 r, so its area is close to the circle's
        qx, qy = dx.abs() - 0.85 * r, dy.abs() - 0.85 * r
        outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
        return outside + torch.maximum(qx, qy).clamp(max=0)
    if shape == 2:  # equilateral triangle pointing up, half-side 0.95 r (Quilez's exact 2-D SDF)
        k, h = math.sqrt(3.0), 0.95 * r
        px, py = dx.abs() - h, -dy + h / k
        fold = px + k * py > 0
        px, py = torch.where(fold, (px - k * py) / 2, px), torch.where(fold, (-k * px - py) / 2, py)
        px = px - torch.clamp(px, -2 * h, torch.zeros_like(px))
        return -torch.sqrt(px ** 2 + py ** 2) * torch.sign(py)
    return (dx.abs() + dy.abs() - r) / math.sqrt(2.0)  # diamond: half-diagonal r


def render_shapes(attrs: dict[str, Tensor], jitter: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """Images (N, 3, size, size) in [-1, 1] of the objects in ``attrs`` ((N, 2), -1 = absent), drawn in
    order on black; ``jitter`` (N, 2, 2) shifts each object's centre in pixels (x, y)."""
    n = attrs["shape"].shape[0]
    scale = size / IMAGE_SIZE
    canvas = torch.zeros(n, 3, size, size)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / scale  # pixel centres on the 32-px grid
    cell = IMAGE_SIZE / GRID
    for slot in range(attrs["shape"].shape[1]):
        for shape in range(len(SHAPE_NAMES)):
            idx = torch.nonzero(attrs["shape"][:, slot] == shape).flatten()
            if len(idx) == 0:
                continue
            pos = attrs["position"][idx, slot]
            cx = (pos % GRID + 0.5).float() * cell + jitter[idx, slot, 0]
            cy = (pos // GRID + 0.5).float() * cell + jitter[idx, slot, 1]
            r = torch.tensor(RADII)[attrs["size"][idx, slot]]
            dx = coords[None, None, :] - cx[:, None, None]
            dy = coords[None, :, None] - cy[:, None, None]
            alpha = (0.5 - _sdf(shape, dx, dy, r[:, None, None]) * scale).clamp(0, 1)[:, None]
            colour = COLOURS[attrs["colour"][idx, slot]][:, :, None, None]
            canvas[idx] = canvas[idx] * (1 - alpha) + colour * alpha
    return canvas * 2 - 1


def render_prompts(prompts: list[ShapePrompt], seed: int = 0) -> Tensor:
    """Real images (N, 3, 32, 32) of exactly what each prompt states, jittered as the dataset is
    (seeded); a size or position left unsaid is drawn at random (positions in free cells). The
    reference of a prompt-matched FID: the distribution a perfectly adherent model would draw."""
    if any(len(p.objects) > 2 for p in prompts):
        raise ValueError("render_prompts draws at most two objects per prompt, as the shapes dataset does")
    rng = np.random.default_rng(seed)
    n = len(prompts)
    attrs = {k: torch.full((n, 2), -1, dtype=torch.long) for k in ("colour", "shape", "size", "position")}
    for i, p in enumerate(prompts):
        stated = {o.position for o in p.objects if o.position is not None}
        free = [c for c in rng.permutation(GRID * GRID).tolist() if c not in stated]
        for j, o in enumerate(p.objects):
            attrs["colour"][i, j], attrs["shape"][i, j] = o.colour, o.shape
            attrs["size"][i, j] = o.size if o.size is not None else int(rng.integers(len(SIZE_NAMES)))
            attrs["position"][i, j] = o.position if o.position is not None else free.pop()
    jitter = torch.from_numpy(rng.uniform(-JITTER, JITTER, size=(n, 2, 2))).float()
    return render_shapes(attrs, jitter)


def _captions(attrs: dict[str, np.ndarray], rng: np.random.Generator) -> list[str]:
    """A caption per image; objects in a random order, size and position each omitted with p = 0.15."""
    n = len(attrs["count"])
    swap = rng.random(n) < 0.5
    say_size, say_pos = rng.random((n, 2)) >= OMIT_PROBABILITY, rng.random((n, 2)) >= OMIT_PROBABILITY
    captions = []
    for i in range(n):
        objects = [ShapeObject(int(attrs["colour"][i, s]), int(attrs["shape"][i, s]),
                               int(attrs["size"][i, s]) if say_size[i, s] else None,
                               int(attrs["position"][i, s]) if say_pos[i, s] else None)
                   for s in range(int(attrs["count"][i]))]
        captions.append(caption_objects(objects[::-1] if swap[i] else objects))
    return captions


def load_shapes(n: int = DEFAULT_SIZE, seed: int = 0, *, split: str = "train", include_heldout: bool | None = None,
                image_size: int | None = None, channels: int | None = None) -> TensorData:
    """``n`` captioned shape images, seeded. ``split="train"`` (the default dataset) never contains a
    held-out colour x shape pair; ``split="test"`` draws from another seed stream and contains every
    pair (``include_heldout`` overrides either choice), for real-image references and classifiers.

    ``attributes``: "colour", "shape", "size", "position" (N, 2) with -1 where there is no second
    object (slot 0 is the first drawn object, not necessarily the first mentioned) and "count" (N,).
    ``labels`` is the shape of object 0, so class-conditional code runs on it too.
    """
    if split not in ("train", "test"):
        raise DataError(f"shapes split must be 'train' or 'test', got {split!r}")
    if n < 1:
        raise DataError(f"shapes: n must be at least 1, got {n}")
    check_image_size(image_size)
    rng = np.random.default_rng(seed + (TEST_SEED_OFFSET if split == "test" else 0))
    heldout = (split == "test") if include_heldout is None else include_heldout
    attrs_np = _draw_attributes(n, rng, heldout)
    jitter = torch.from_numpy(rng.uniform(-JITTER, JITTER, size=(n, 2, 2))).float()
    captions = _captions(attrs_np, rng)
    attrs = {k: torch.from_numpy(v) for k, v in attrs_np.items()}
    size = IMAGE_SIZE if image_size is None else image_size
    # Larger images are drawn at their size (the shapes are analytic: 64x64 ones have 64 pixels of
    # detail, not 32 upsampled); smaller ones are drawn at 32 and downsampled (antialiased), as before.
    x = render_shapes(attrs, jitter, max(size, IMAGE_SIZE))
    x = resize_images(x, size) if size < IMAGE_SIZE else x
    return TensorData(set_channels(x, channels), attrs["shape"][:, 0].clone(), len(SHAPE_NAMES), "shapes",
                      list(SHAPE_NAMES), captions, attrs)


def _random_object(rng: np.random.Generator, heldout: bool, position: int) -> ShapeObject:
    """A fully stated object whose colour x shape pair is held out (or not), at ``position``."""
    table = _heldout_table()
    pairs = torch.nonzero(table == heldout).tolist()
    colour, shape = pairs[rng.integers(len(pairs))]
    return ShapeObject(colour, shape, int(rng.integers(len(SIZE_NAMES))), position)


def shapes_prompts(split: str = "seen", n: int = 64, seed: int = 0, *, max_objects: int = 2) -> list[ShapePrompt]:
    """``n`` seeded evaluation prompts stating every attribute of one or two objects (two with
    probability 1/2 when ``max_objects`` is 2). "seen": every colour x shape pair occurs in training
    (the combination of attributes as a whole may still be new); "heldout": the first object's pair is
    one of ``HELDOUT_PAIRS`` and any second object's is seen, so each prompt tests one unseen pairing."""
    if split not in ("seen", "heldout"):
        raise ValueError(f"split must be 'seen' or 'heldout', got {split!r}")
    if max_objects not in (1, 2):
        raise ValueError(f"max_objects must be 1 or 2, got {max_objects}")
    rng = np.random.default_rng(seed + (0 if split == "seen" else TEST_SEED_OFFSET))
    prompts = []
    for _ in range(n):
        count = 2 if max_objects == 2 and rng.random() < TWO_OBJECT_PROBABILITY else 1
        cells = rng.permutation(GRID * GRID)[:count].tolist()
        objects = [_random_object(rng, split == "heldout", cells[0])]
        objects += [_random_object(rng, False, c) for c in cells[1:]]
        if count == 2 and rng.random() < 0.5:
            objects.reverse()
        prompts.append(ShapePrompt(caption_objects(objects), tuple(objects)))
    return prompts
