"""Tests for undiffuse.data: built-in datasets, toy 2-D sets, splits, image folders and their errors."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from undiffuse.data import DataError, TensorData, load_dataset

TOY_VARIANTS = ["swissroll", "8gaussians", "moons", "checkerboard"]


@pytest.fixture(scope="module")
def mnist() -> TensorData:
    return load_dataset("mnist")


# --- built-in image datasets -------------------------------------------------------------------------

def test_mnist_is_padded_to_32_with_exact_background(mnist: TensorData) -> None:
    assert mnist.x.shape == (5000, 1, 32, 32) and mnist.x.dtype == torch.float32
    assert mnist.x.min() == -1.0 and mnist.x.max() == 1.0
    border = torch.cat([mnist.x[..., :2, :].flatten(), mnist.x[..., -2:, :].flatten(),
                        mnist.x[..., :2].flatten(), mnist.x[..., -2:].flatten()])
    assert (border == -1.0).all()
    assert mnist.labels.dtype == torch.long and mnist.num_classes == 10
    assert mnist.labels.bincount().tolist() == [500] * 10
    assert mnist.class_names == [str(d) for d in range(10)] and mnist.name == "mnist"


def test_mnist_resize_and_channels() -> None:
    small = load_dataset("mnist", image_size=16, channels=3)
    assert small.x.shape == (5000, 3, 16, 16)
    assert small.x.min() >= -1.0 and small.x.max() <= 1.0
    assert torch.equal(small.x[:, 0], small.x[:, 2])
    assert load_dataset("mnist", image_size=28).x.shape == (5000, 1, 28, 28)


def test_mnist_cap_is_stratified_and_seeded() -> None:
    a, b = load_dataset("mnist", n=100, seed=3), load_dataset("mnist", n=100, seed=3)
    assert len(a) == 100 and a.labels.bincount().tolist() == [10] * 10  # the source is sorted by class
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, load_dataset("mnist", n=100, seed=4).x)


def test_digits() -> None:
    digits = load_dataset("digits")
    assert digits.x.shape == (1797, 1, 8, 8) and digits.num_classes == 10
    assert digits.x.min() == -1.0 and digits.x.max() == 1.0
    assert load_dataset("digits", image_size=16).x.shape == (1797, 1, 16, 16)


# --- toy 2-D -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", TOY_VARIANTS)
def test_toy2d_shape_scale_and_seeding(variant: str) -> None:
    data = load_dataset(f"toy2d:{variant}", n=2000, seed=1)
    assert data.x.shape == (2000, 2) and data.x.dtype == torch.float32 and data.name == f"toy2d:{variant}"
    assert data.x.mean(0).abs().max() < 0.2 and 0.5 < data.x.std() < 2.0
    assert torch.equal(data.x, load_dataset(f"toy2d:{variant}", n=2000, seed=1).x)
    assert not torch.equal(data.x, load_dataset(f"toy2d:{variant}", n=2000, seed=2).x)


def test_toy2d_default_and_shapes_of_the_distributions() -> None:
    assert load_dataset("toy2d").name == "toy2d:swissroll" and len(load_dataset("toy2d")) == 10000
    gauss = load_dataset("toy2d:8gaussians", n=4000)
    assert gauss.num_classes == 8 and set(gauss.labels.tolist()) == set(range(8))
    assert ((gauss.x.norm(dim=1) - 2.0).abs() < 0.5).all()
    angle = torch.atan2(gauss.x[:, 1], gauss.x[:, 0]) % (2 * torch.pi)
    expected = gauss.labels * (torch.pi / 4)
    assert (torch.remainder(angle - expected + torch.pi, 2 * torch.pi) - torch.pi).abs().max() < 0.3
    board = load_dataset("toy2d:checkerboard", n=4000).x
    assert board.abs().max() <= 2.0
    assert (board.floor().sum(dim=1) % 2 == 0).all()


def test_toy2d_errors() -> None:
    with pytest.raises(DataError, match="spiral.*swissroll, 8gaussians, moons, checkerboard"):
        load_dataset("toy2d:spiral")
    with pytest.raises(DataError, match="image_size"):
        load_dataset("toy2d", image_size=32)


# --- split -------------------------------------------------------------------------------------------

def _tagged(n: int, classes: int | None) -> TensorData:
    """Items whose x is their own index, so splits can be traced back."""
    labels = None if classes is None else torch.arange(n) % classes
    return TensorData(torch.arange(n, dtype=torch.float32)[:, None], labels, classes, "tagged")


@pytest.mark.parametrize("classes", [None, 4])
def test_split_is_disjoint_complete_and_deterministic(classes: int | None) -> None:
    data = _tagged(103, classes)
    rest, held = data.split(0.2, seed=0)
    assert len(held) == round(0.2 * 103) and len(rest) + len(held) == 103
    ids_rest, ids_held = set(rest.x[:, 0].tolist()), set(held.x[:, 0].tolist())
    assert not ids_rest & ids_held and len(ids_rest | ids_held) == 103
    again_rest, again_held = data.split(0.2, seed=0)
    assert torch.equal(held.x, again_held.x) and torch.equal(rest.x, again_rest.x)
    assert not torch.equal(held.x, data.split(0.2, seed=1)[1].x)
    if classes is not None:
        assert torch.equal(held.labels, held.x[:, 0].long() % classes)  # labels travel with their items
        assert held.labels.bincount().tolist() in ([5, 5, 5, 6], [5, 5, 6, 5], [6, 5, 5, 5], [5, 6, 5, 5])


def test_split_is_stratified_on_unbalanced_classes() -> None:
    labels = torch.tensor([0] * 90 + [1] * 10)
    data = TensorData(torch.zeros(100, 2), labels, 2, "unbalanced")
    _, held = data.split(0.1, seed=0)
    assert held.labels.bincount().tolist() == [9, 1]


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(DataError, match="between 0 and 1"):
        _tagged(10, None).split(1.0, seed=0)
    with pytest.raises(DataError, match="empty"):
        _tagged(10, None).split(0.01, seed=0)


# --- image folders -----------------------------------------------------------------------------------

def _save(path: Path, size: tuple[int, int] = (40, 30), color: tuple | int = (200, 30, 30), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    """cats/ holds a colour PNG and a colour upper-case JPEG; dogs/ a greyscale PNG in a nested folder."""
    _save(tmp_path / "cats" / "a.png")
    _save(tmp_path / "cats" / "b.JPEG", color=(30, 200, 30))
    _save(tmp_path / "dogs" / "deep" / "c.png", color=128, mode="L")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    _save(tmp_path / ".hidden" / "junk.png")
    (tmp_path / "cats" / "._a.png").write_bytes(b"macOS resource fork, not a PNG")
    return tmp_path


def test_folder_shapes_labels_and_channels(classes: Path) -> None:
    data = load_dataset(str(classes), image_size=16, labels_from_subfolders=True)
    assert data.x.shape == (3, 3, 16, 16) and data.x.dtype == torch.float32
    assert data.class_names == ["cats", "dogs"] and data.labels.tolist() == [0, 0, 1] and data.num_classes == 2
    assert data.name == f"folder:{classes.resolve()}"
    red = torch.tensor([200, 30, 30]) / 127.5 - 1
    assert torch.allclose(data.x[0].mean(dim=(1, 2)), red, atol=0.02)
    assert torch.allclose(data.x[2], torch.full_like(data.x[2], 128 / 127.5 - 1), atol=0.01)  # grey -> RGB
    grey = load_dataset(f"folder:{classes}", image_size=16, channels=1)
    assert grey.x.shape == (3, 1, 16, 16) and grey.labels is None


def test_folder_default_size_and_greyscale_default(tmp_path: Path) -> None:
    for i in range(3):
        _save(tmp_path / f"{i}.png", size=(80, 70), color=60 * i, mode="L")
    data = load_dataset(str(tmp_path))
    assert data.x.shape == (3, 1, 64, 64)
    assert load_dataset(str(tmp_path), n=2, seed=0).x.shape == (2, 1, 64, 64)


def test_folder_resizes_short_side_then_centre_crops(tmp_path: Path) -> None:
    # 128x64: black quarters left and right, white middle half; at 32 px the crop is exactly the middle.
    pixels = np.zeros((64, 128), dtype=np.uint8)
    pixels[:, 32:96] = 255
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    x = load_dataset(str(tmp_path), image_size=32).x[0, 0]
    assert x.shape == (32, 32)
    assert (x[:, 2:-2] > 0.95).all() and x.mean() > 0.9


def test_folder_special_pixel_formats(tmp_path: Path) -> None:
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(tmp_path / "deep.png")  # 16-bit grey
    _save(tmp_path / "clear.png", size=(32, 32), color=(0, 0, 0, 0), mode="RGBA")  # fully transparent
    data = load_dataset(str(tmp_path), image_size=32, channels=1)
    clear, deep = data.x[:, 0, 16, 16].tolist()
    assert clear == 1.0  # transparency is flattened onto white
    assert abs(deep - (128 / 127.5 - 1)) < 0.01  # scaled from 16 bits, not clipped to white


def test_folder_allow_upscale(tmp_path: Path) -> None:
    _save(tmp_path / "tiny.png", size=(10, 12))
    assert load_dataset(str(tmp_path), image_size=32, allow_upscale=True).x.shape == (1, 3, 32, 32)


# --- errors ------------------------------------------------------------------------------------------

def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="a.png is a file"):
        load_dataset(str(_save(tmp_path / "a.png")))


def test_folder_without_images_lists_extensions(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=rf"{tmp_path.name}.*\.png, \.jpg, \.jpeg, \.bmp, \.webp"):
        load_dataset(str(tmp_path))


def test_corrupt_image_errors_naming_file_and_skip_option(tmp_path: Path) -> None:
    _save(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="broken.png.*on_bad_image='skip'"):
        load_dataset(str(tmp_path), image_size=16)


def test_truncated_jpeg_is_a_bad_image(tmp_path: Path) -> None:
    data = _save(tmp_path / "full.jpg", size=(64, 64)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        load_dataset(str(tmp_path), image_size=16)


def test_skip_mode_warns_with_count_and_keeps_good_images(tmp_path: Path) -> None:
    _save(tmp_path / "good.png")
    for i in range(7):
        (tmp_path / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match=r"skipped 7 unreadable.*bad0.png.*and 2 more"):
        data = load_dataset(str(tmp_path), image_size=16, on_bad_image="skip")
    assert data.x.shape == (1, 3, 16, 16)


def test_skip_mode_with_only_bad_images_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fails if it warns instead of raising
        with pytest.raises(DataError, match="all 1 images.*bad.png"):
            load_dataset(str(tmp_path), image_size=16, on_bad_image="skip")


def test_too_small_image_names_file_sizes_and_remedy(tmp_path: Path) -> None:
    _save(tmp_path / "big.png", size=(64, 64))
    _save(tmp_path / "small.png", size=(40, 20))
    with pytest.raises(DataError, match=r"small.png is 40x20 pixels.*image size 32.*--image-size 20"):
        load_dataset(str(tmp_path), image_size=32, on_bad_image="skip")


def test_labels_need_every_image_in_a_subfolder(classes: Path) -> None:
    _save(classes / "loose.png")
    with pytest.raises(DataError, match="1 sit directly in it: loose.png"):
        load_dataset(str(classes), image_size=16, labels_from_subfolders=True)


def test_bad_option_values(classes: Path) -> None:
    with pytest.raises(DataError, match="channels must be 1 .* or 3"):
        load_dataset(str(classes), channels=2)
    with pytest.raises(DataError, match="on_bad_image"):
        load_dataset(str(classes), on_bad_image="ignore")


def test_unknown_spec_lists_valid_names() -> None:
    with pytest.raises(DataError, match=r"'minst' \(did you mean 'mnist'\?\).*digits, toy2d.*folder"):
        load_dataset("minst")


def test_shapes_larger_than_32_are_drawn_at_their_size():
    """64x64 shapes have 64 pixels of detail (drawn at 64), not the 32x32 images upsampled; their 2x2
    averages are the 32x32 images up to the antialiased edges."""
    import torch.nn.functional as F

    from undiffuse.data import load_shapes
    from undiffuse.data.base import resize_images

    x64, x32 = load_shapes(n=16, image_size=64).x, load_shapes(n=16).x
    assert x64.shape == (16, 3, 64, 64)
    assert (F.avg_pool2d(x64, 2) - x32).abs().mean() < 0.02
    assert (x64 - resize_images(x32, 64)).abs().max() > 0.3
