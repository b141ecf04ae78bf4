"""Pictures people look at: image grids, denoising trajectories, loss curves, 2-D scatters and line plots.

Grids are drawn with PIL; plots with matplotlib's Agg canvas, imported lazily and without pyplot so no
global backend state is touched. Every writer creates missing parent folders, writes the PNG atomically
(``checkpoint.atomic_write``: a temporary file in the same folder, fsynced, then ``os.replace``) and
returns the path written.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from .checkpoint import atomic_write

MIN_GRID_WIDTH = 256  # default upscaling makes grids at least this wide, so 8x8 digits are visible
MIN_TRAJECTORY_TILE = 48  # trajectory tiles are at least this wide, so the t labels above them fit
WHITE = 1.0


def to_uint8(x: Tensor) -> np.ndarray:
    """Images in [-1, 1] as uint8, channel axis moved last: (C, H, W) -> (H, W, C), (N, C, H, W) -> (N, H, W, C).

    Values outside [-1, 1] are clamped and NaNs shown as mid-grey, so a diverged sample still renders.
    """
    x = torch.nan_to_num(x.detach().float().cpu(), nan=0.0).clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).movedim(-3, -1).numpy()


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None, padding: int = 2,
              upscale: int | None = None, pad_value: float = WHITE) -> Path:
    """Save (N, C, H, W) images in [-1, 1] (C 1 or 3) as one PNG grid, ``nrow`` images per row (~sqrt(N)).

    Each image is enlarged by the integer ``upscale`` with nearest-neighbour pixels (default: the smallest
    factor making the grid at least 256 px wide); ``padding`` pixels of ``pad_value`` separate the tiles.
    """
    return _save_image(grid_pixels(images, nrow, padding, upscale, pad_value), path)


def grid_pixels(images: Tensor, nrow: int | None = None, padding: int = 2, upscale: int | None = None,
                pad_value: float = WHITE) -> np.ndarray:
    """The (H, W, C) uint8 pixels that ``save_grid`` writes (the web page sends them from memory)."""
    _check_images(images)
    nrow = min(nrow or math.ceil(math.sqrt(len(images))), len(images))
    up = upscale or _auto_upscale(nrow, images.shape[-1], padding)
    return _grid(images, nrow, padding, up, pad_value)


def save_trajectory(xts: Sequence[Tensor], x0_hats: Sequence[Tensor], path: str | Path,
                    ts: Sequence[float] | None = None, *, columns: int = 10, max_images: int = 8,
                    upscale: int | None = None, padding: int = 2) -> Path:
    """Show sampling as noise turning into images: for each image a row of x_t, then a row of predicted x0.

    ``xts[s]`` and ``x0_hats[s]`` are (B, C, H, W) batches at step ``s``; ``columns`` evenly spaced steps
    (first and last included) are shown for the first ``max_images`` images. Rows are labelled, and
    columns too when ``ts`` gives the time of each step.
    """
    return _save_image(trajectory_pixels(xts, x0_hats, ts, columns=columns, max_images=max_images,
                                         upscale=upscale, padding=padding), path)


def trajectory_pixels(xts: Sequence[Tensor], x0_hats: Sequence[Tensor], ts: Sequence[float] | None = None, *,
                      columns: int = 10, max_images: int = 8, upscale: int | None = None,
                      padding: int = 2) -> np.ndarray:
    """The pixels that ``save_trajectory`` writes."""
    if not xts or len(xts) != len(x0_hats) or (ts is not None and len(ts) != len(xts)):
        raise ValueError(f"need equally long, non-empty xts, x0_hats (and ts); got {len(xts)}, {len(x0_hats)}"
                         + ("" if ts is None else f", {len(ts)}"))
    steps = np.linspace(0, len(xts) - 1, min(columns, len(xts))).round().astype(int).tolist()
    count = min(len(xts[0]), max_images)
    tiles = [batch[i] for i in range(count) for seq in (xts, x0_hats) for batch in (seq[s] for s in steps)]
    images = torch.stack(tiles)
    _check_images(images)
    height, width = images.shape[-2:]
    up = upscale or max(_auto_upscale(len(steps), width, padding), math.ceil(MIN_TRAJECTORY_TILE / width))
    grid = Image.fromarray(_squeeze(_grid(images, len(steps), padding, up, WHITE)))
    col_labels = None if ts is None else [_format_t(ts[s]) for s in steps]
    pitch = (height * up + padding, width * up + padding)
    canvas = _label(grid, ["x_t", "x0 pred"] * count, col_labels, pitch, padding)
    return np.asarray(canvas)


def save_labelled_grid(rows: Sequence[Tensor], path: str | Path, row_labels: Sequence[str] | None = None,
                       col_labels: Sequence[str] | None = None, *, upscale: int | None = None,
                       padding: int = 2) -> Path:
    """Save rows of images side by side: ``rows[r]`` is a (K, C, H, W) batch shown as row r (every row
    K images), named on the left by ``row_labels[r]`` and, above each column, by ``col_labels``
    (a cold degradation's ladder: one row per image, one column per severity t; a restoration strip:
    one row per stage). Tiles are enlarged as for trajectories, so the labels fit."""
    return _save_image(labelled_grid_pixels(rows, row_labels, col_labels, upscale=upscale, padding=padding), path)


def labelled_grid_pixels(rows: Sequence[Tensor], row_labels: Sequence[str] | None = None,
                         col_labels: Sequence[str] | None = None, *, upscale: int | None = None,
                         padding: int = 2) -> np.ndarray:
    """The pixels that ``save_labelled_grid`` writes."""
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError(f"need a non-empty list of equally long rows, got lengths {[len(r) for r in rows]}")
    k = len(rows[0])
    if (row_labels is not None and len(row_labels) != len(rows)) or (col_labels is not None and len(col_labels) != k):
        raise ValueError(f"{len(rows)} rows of {k} images need as many row and column labels")
    images = torch.cat([torch.as_tensor(r) for r in rows])
    _check_images(images)
    height, width = images.shape[-2:]
    up = upscale or max(_auto_upscale(k, width, padding), math.ceil(MIN_TRAJECTORY_TILE / width))
    grid = Image.fromarray(_squeeze(_grid(images, k, padding, up, WHITE)))
    pitch = (height * up + padding, width * up + padding)
    labels = list(row_labels) if row_labels is not None else [""] * len(rows)
    canvas = _label(grid, labels, None if col_labels is None else list(col_labels), pitch, padding)
    return np.asarray(canvas)


def plot_loss_curve(log: str | Path | Sequence[dict[str, Any]], path: str | Path, ema: float | None = None,
                    title: str | None = None) -> Path:
    """Plot training loss against step, raw and EMA-smoothed (bias-corrected), on a log y axis.

    ``ema`` defaults to a window of about a tenth of the logged points (at most 0.98), so the
    smoothed curve follows the loss whether the log holds 40 points or 40,000.

    ``log`` is a JSON-lines file or a list of dicts; records without both 'step' and 'loss' (evaluation
    lines, say) are ignored.
    """
    records = _read_jsonl(Path(log)) if isinstance(log, (str, Path)) else list(log)
    points = [(float(r["step"]), float(r["loss"])) for r in records if "step" in r and "loss" in r]
    if not points:
        raise ValueError(f"no records with both 'step' and 'loss' in {log if isinstance(log, (str, Path)) else 'log'}")
    steps, losses = map(np.asarray, zip(*points))
    if ema is None:
        ema = float(np.clip(1 - 10 / len(points), 0.0, 0.98))
    fig, ax = _figure()
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(steps, _ema(losses, ema), color="tab:blue", linewidth=1.8, label=f"EMA ({ema:.2f})")
    finite = losses[np.isfinite(losses)]
    if finite.size and (finite > 0).all():  # a log axis would silently drop non-positive losses
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss", title=title or "training loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return _save_figure(fig, path)


def plot_points(points: Tensor, path: str | Path, reference: Tensor | None = None,
                title: str | None = None) -> Path:
    """Scatter (N, 2) points, beside a ``reference`` scatter (the data) on the same axes when given.

    The view is set by the reference (or the points themselves) ignoring the outer 0.5% on each side,
    so a few diverged samples cannot squash the picture; how many fall outside is written in the title.
    """
    pts = _as_points(points)
    ref = None if reference is None else _as_points(reference)
    lo, hi = _view(pts if ref is None else ref)
    panels = [("samples", pts)] if ref is None else [("data", ref), ("samples", pts)]
    fig, axes = _figure(figsize=(5 * len(panels), 5), ncols=len(panels))
    for ax, (name, p) in zip(np.atleast_1d(axes), panels):
        outside = int((~((p >= lo) & (p <= hi)).all(axis=1)).sum())
        ax.scatter(p[:, 0], p[:, 1], s=2, alpha=0.5, linewidths=0, color="black" if name == "data" else "tab:red")
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), aspect="equal",
               title=f"{name} (n={len(p)}" + (f", {outside} outside view)" if outside else ")"))
    if title:
        fig.suptitle(title)
    return _save_figure(fig, path)


def plot_curves(x: Sequence[float], ys: dict[str, Sequence[float]], path: str | Path, xlabel: str, ylabel: str,
                logx: bool = False, title: str | None = None, logy: bool = False) -> Path:
    """Line plot of several named series over shared ``x`` (e.g. rate-distortion or sampler frontiers)."""
    for name, y in ys.items():
        if len(y) != len(x):
            raise ValueError(f"series {name!r} has {len(y)} values but x has {len(x)}")
    fig, ax = _figure()
    for name, y in ys.items():
        ax.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker="o", markersize=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "")
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    if ys:
        ax.legend()
    return _save_figure(fig, path)


# --- grids -------------------------------------------------------------------------------------------

def _check_images(images: Tensor) -> None:
    """Grids need a non-empty (N, C, H, W) batch with 1 or 3 channels."""
    if images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"expected a non-empty (N, C, H, W) batch with C 1 or 3, got shape {tuple(images.shape)}")


def _auto_upscale(nrow: int, width: int, padding: int) -> int:
    """Smallest integer factor that makes a grid of ``nrow`` tiles at least MIN_GRID_WIDTH wide."""
    return max(1, math.ceil((MIN_GRID_WIDTH - padding * (nrow + 1)) / (nrow * width)))


def _grid(images: Tensor, nrow: int, padding: int, upscale: int, pad_value: float) -> np.ndarray:
    """Tile images row by row into one (H, W, C) uint8 array, each enlarged ``upscale`` times."""
    tiles = to_uint8(images).repeat(upscale, axis=1).repeat(upscale, axis=2)
    n, th, tw, c = tiles.shape
    rows = math.ceil(n / nrow)
    fill = to_uint8(torch.full((c, 1, 1), float(pad_value)))[0, 0]
    grid = np.empty((rows * (th + padding) + padding, nrow * (tw + padding) + padding, c), dtype=np.uint8)
    grid[:] = fill
    for i, tile in enumerate(tiles):
        row, col = divmod(i, nrow)
        top, left = padding + row * (th + padding), padding + col * (tw + padding)
        grid[top:top + th, left:left + tw] = tile
    return grid


def _squeeze(pixels: np.ndarray) -> np.ndarray:
    """PIL wants greyscale as (H, W), not (H, W, 1)."""
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in font at ``size`` (Pillow >= 10.1), else its fixed-size bitmap font."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _label(grid: Image.Image, row_labels: list[str], col_labels: list[str] | None, pitch: tuple[int, int],
           padding: int) -> Image.Image:
    """Add a left margin naming each row and, if given, a top margin naming each column.

    ``pitch`` is the (vertical, horizontal) distance between tile origins in the grid.
    """
    font = _font(12)
    measure = ImageDraw.Draw(grid)
    left = int(max(measure.textlength(t, font=font) for t in row_labels)) + 8
    top = 0 if col_labels is None else 18
    white = 255 if grid.mode == "L" else (255, 255, 255)
    canvas = Image.new(grid.mode, (grid.width + left, grid.height + top), white)
    canvas.paste(grid, (left, top))
    draw, black = ImageDraw.Draw(canvas), 0 if grid.mode == "L" else (0, 0, 0)
    for r, text in enumerate(row_labels):
        draw.text((4, top + padding + r * pitch[0] + (pitch[0] - padding) // 2 - 6), text, fill=black, font=font)
    for c, text in enumerate(col_labels or []):
        centre = left + padding + c * pitch[1] + (pitch[1] - padding) / 2
        draw.text((centre - measure.textlength(text, font=font) / 2, 3), text, fill=black, font=font)
    if col_labels is not None:
        draw.text((4, 3), "t", fill=black, font=font)
    return canvas


def _format_t(t: float) -> str:
    """Integer steps as integers (1000, not 1e+03), continuous times to 3 significant digits."""
    t = float(t)
    return str(int(t)) if t.is_integer() else f"{t:.3g}"


# --- plots -------------------------------------------------------------------------------------------

def _figure(figsize: tuple[float, float] = (6, 4), ncols: int = 1) -> tuple[Any, Any]:
    """A pyplot-free figure on an Agg canvas (100 dpi, so figsize (6, 4) is 600x400 px) and its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols)


def _ema(values: np.ndarray, decay: float) -> np.ndarray:
    """Bias-corrected exponential moving average, so the early curve is not dragged towards zero."""
    out, acc = np.empty_like(values, dtype=float), 0.0
    for i, v in enumerate(values):
        acc = decay * acc + (1 - decay) * v
        out[i] = acc / (1 - decay ** (i + 1))
    return out


def _as_points(points: Tensor | np.ndarray) -> np.ndarray:
    """(N, 2) float array from a tensor or array, or a ValueError for anything else."""
    p = points.detach().float().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise ValueError(f"expected non-empty (N, 2) points, got shape {p.shape}")
    return p


def _view(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis limits covering the central 99% of finite points, with a 10% margin."""
    finite = p[np.isfinite(p).all(axis=1)]
    if len(finite) == 0:
        return np.array([-1.0, -1.0]), np.array([1.0, 1.0])
    lo, hi = np.percentile(finite, 0.5, axis=0), np.percentile(finite, 99.5, axis=0)
    margin = np.maximum(0.1 * (hi - lo), 1e-3)
    return lo - margin, hi + margin


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Parse a JSON-lines file, skipping blank lines."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --- atomic writes (``checkpoint.atomic_write``) ----------------------------------------------------

#: Pictures are as readable as any other file (``atomic_write``'s temporary file is owner-only).
PNG_MODE = 0o644


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(_squeeze(pixels) if pixels.ndim == 3 else pixels)


def _save_image(pixels: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, C) or (H, W) uint8 array as a PNG."""
    image = _image(pixels)
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"), mode=PNG_MODE)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An (H, W, C) or (H, W) uint8 array as PNG bytes, the same PNG that ``_save_image`` writes."""
    buf = io.BytesIO()
    _image(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _save_figure(fig: Any, path: str | Path) -> Path:
    """Render a matplotlib figure to PNG."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), mode=PNG_MODE)
