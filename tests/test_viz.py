"""Tests for undiffuse.viz: every writer produces a readable PNG of the expected size and content."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse import viz


def _open(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


def test_to_uint8_clamps_and_moves_channels_last() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0, 5.0, -7.0, float("nan")]).view(1, 1, 2, 3).expand(2, 3, 2, 3)
    out = viz.to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3, 3)
    assert out[0, :, :, 0].ravel().tolist() == [0, 128, 255, 255, 0, 128]
    assert viz.to_uint8(x[0]).shape == (2, 3, 3)


def test_save_grid_layout_upscale_and_atomicity(tmp_path: Path) -> None:
    images = torch.linspace(-1, 1, 10).view(10, 1, 1, 1).expand(10, 1, 8, 8)
    path = viz.save_grid(images, tmp_path / "new" / "dir" / "grid.png")
    img = _open(path)
    # 10 images -> 4 per row, 3 rows; 8 px tiles upscaled 8x so the grid is at least 256 px wide.
    assert img.mode == "L" and img.size == (4 * (64 + 2) + 2, 3 * (64 + 2) + 2)
    pixels = np.asarray(img)
    assert pixels[2 + 32, 2 + 32] == 0 and pixels[2 * 66 + 34, 66 + 34] == 255  # images 0 and 9
    assert pixels[0, 0] == 255 and pixels[-10, -10] == 255  # white padding, empty cells filled
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temporary file left behind


def test_save_grid_rgb_with_explicit_options(tmp_path: Path) -> None:
    images = torch.zeros(6, 3, 5, 7)
    images[:, 0] = 1.0  # red
    img = _open(viz.save_grid(images, tmp_path / "rgb.png", nrow=3, padding=1, upscale=2, pad_value=-1.0))
    assert img.mode == "RGB" and img.size == (3 * (14 + 1) + 1, 2 * (10 + 1) + 1)
    pixels = np.asarray(img)
    assert pixels[0, 0].tolist() == [0, 0, 0] and pixels[5, 5].tolist() == [255, 128, 128]


def test_save_grid_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="C 1 or 3"):
        viz.save_grid(torch.zeros(4, 2, 8, 8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="N, C, H, W"):
        viz.save_grid(torch.zeros(1, 8, 8), tmp_path / "x.png")


def test_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    def explode(_: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        viz.atomic_write(tmp_path / "out.png", explode)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("with_ts", [False, True])
def test_save_trajectory_interleaves_xt_and_x0_rows(tmp_path: Path, with_ts: bool) -> None:
    steps, batch = 25, 3
    xts = [torch.full((batch, 1, 8, 8), -1.0) for _ in range(steps)]  # x_t black
    x0s = [torch.full((batch, 1, 8, 8), 1.0) for _ in range(steps)]  # predicted x0 white
    ts = [1 - i / (steps - 1) for i in range(steps)] if with_ts else None
    img = _open(viz.save_trajectory(xts, x0s, tmp_path / "traj.png", ts=ts, columns=5, upscale=2))
    tile, pitch = 16, 18
    grid_w, grid_h = 5 * pitch + 2, 2 * batch * pitch + 2
    left, top = img.width - grid_w, img.height - grid_h  # labels sit in left and top margins
    assert left > 0 and (top > 0) == with_ts
    pixels = np.asarray(img.convert("L"))
    for row in range(2 * batch):
        centre = pixels[top + 2 + row * pitch + tile // 2, left + 2 + 4 * pitch + tile // 2]
        assert centre == (0 if row % 2 == 0 else 255)
    assert pixels[:, :left].min() < 128  # row labels were drawn


def test_save_trajectory_checks_lengths(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="equally long"):
        viz.save_trajectory([torch.zeros(1, 1, 4, 4)], [], tmp_path / "t.png")


def test_plot_loss_curve_from_jsonl_and_list(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": i, "loss": 1.0 / (i + 1)}) for i in range(50)] + [json.dumps({"step": 50, "fid": 3})]
    log.write_text("\n".join(lines) + "\n")
    assert _open(viz.plot_loss_curve(log, tmp_path / "a" / "loss.png")).size == (600, 400)
    assert _open(viz.plot_loss_curve([{"step": 0, "loss": 0.0}, {"step": 1, "loss": 1.0}],
                                     tmp_path / "loss2.png")).size == (600, 400)
    with pytest.raises(ValueError, match="no records"):
        viz.plot_loss_curve([{"step": 1, "fid": 2.0}], tmp_path / "none.png")


def test_ema_is_bias_corrected() -> None:
    assert np.allclose(viz._ema(np.full(5, 3.0), 0.9), 3.0)


def test_plot_points_with_and_without_reference(tmp_path: Path) -> None:
    pts = torch.randn(500, 2)
    pts[0] = 1e6  # a diverged sample must not break the picture
    assert _open(viz.plot_points(pts, tmp_path / "pts.png")).size == (500, 500)
    both = viz.plot_points(pts, tmp_path / "vs.png", reference=torch.randn(300, 2), title="t")
    assert _open(both).size == (1000, 500)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.plot_points(torch.zeros(5, 3), tmp_path / "bad.png")


def test_plot_curves(tmp_path: Path) -> None:
    path = viz.plot_curves([1, 10, 100], {"ddim": [30.0, 10.0, 5.0], "ddpm": [50, 20, 4]}, tmp_path / "c.png",
                           "steps", "FID", logx=True, title="frontier")
    assert _open(path).size == (600, 400)
    with pytest.raises(ValueError, match="'ddim' has 2 values"):
        viz.plot_curves([1, 2, 3], {"ddim": [1, 2]}, tmp_path / "c2.png", "x", "y")


def test_the_pixels_in_memory_are_the_pictures_written(tmp_path):
    # The web page sends PNG bytes made in memory; they must be the files the writers save.
    from undiffuse.viz import grid_pixels, labelled_grid_pixels, png_bytes, save_grid, save_labelled_grid

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert save_grid(x, tmp_path / "g.png").read_bytes() == png_bytes(grid_pixels(x))
    rows, labels = [x, -x], ["a", "b"]
    assert (save_labelled_grid(rows, tmp_path / "l.png", labels).read_bytes()
            == png_bytes(labelled_grid_pixels(rows, labels)))
