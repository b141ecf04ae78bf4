"""What the web page may ask for, and the checks that turn a request into a ``SampleSpec``.

Every bad request becomes a ``BadInput`` whose message names the field and the fix; the page shows
it as it is. The numbers are bounded so that one visitor cannot hold the machine (``Limits``); the
rest is checked where the Python API checks it (``SampleSpec.validate``, the run's conditioning).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from numbers import Integral

from PIL import Image
from torch import Tensor

from ..sampling import SampleSpec

PRECISIONS = {"float32": False, "bf16": True}
#: Pillow decodes only these formats from an upload (no PDF, EPS, ... through the back door).
UPLOAD_FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP"]


class BadInput(ValueError):
    """A request the server refuses (HTTP 400 unless ``status`` says otherwise), with the message
    the page shows."""

    def __init__(self, message: str, status: int = 400, **extra):
        super().__init__(message)
        self.status, self.extra = status, extra


@dataclass(frozen=True)
class Limits:
    """The bounds of one request and of the server's queue (``undiffuse serve --help`` sets them)."""

    max_steps: int = 250
    max_batch: int = 16
    max_prompt_chars: int = 200
    max_upload_bytes: int = 2 * 1024 * 1024
    #: An upload larger than this many pixels is refused before it is decoded (a decompression bomb).
    max_image_pixels: int = 4096 * 4096
    #: Jobs waiting or running, server-wide: one more is refused until one ends.
    max_queue: int = 8
    #: Finished jobs whose pictures stay downloadable (the oldest are dropped first).
    keep_finished: int = 32

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def integer(payload: dict, key: str, default: int | None, low: int | None, high: int,
            hint: str = "") -> int | None:
    """``payload[key]`` as an integer in [low, high] (missing or empty: ``default``; ``low`` None:
    the lower bound is checked by whoever takes the value)."""
    value = payload.get(key)
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise BadInput(f"{key} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise BadInput(f"{key} must be a whole number, got {value!r}")
    if value > high and low is None:
        raise BadInput(f"{key} must be at most {high}, got {value}{hint}")
    if low is not None and not low <= value <= high:
        raise BadInput(f"{key} must lie in {low}..{high}, got {value}{hint}")
    return int(value)


def number(payload: dict, key: str, default: float) -> float:
    """``payload[key]`` as a finite float (range checks are the spec's)."""
    value = payload.get(key)
    if value is None or value == "":
        return default
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise BadInput(f"{key} must be a number, got {value!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadInput(f"{key} must be a finite number, got {value}")
    return value


def text(payload: dict, key: str, limits: Limits) -> str | None:
    """A prompt: a string of at most ``max_prompt_chars`` characters (empty: None)."""
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{key} must be text, got {type(value).__name__}")
    value = value.strip()
    if len(value) > limits.max_prompt_chars:
        raise BadInput(f"{key} is {len(value)} characters long; the limit is {limits.max_prompt_chars}")
    return value or None


def default_precision(cfg: dict) -> str:
    """The precision the page preselects for a run: the CLI's default (``compiling.bf16_by_default``).
    A request that names no precision samples in float32, as the Python API does."""
    import torch

    from ..compiling import bf16_by_default

    return "bf16" if bf16_by_default(cfg, torch.device("cpu")) else "float32"


def choice(payload: dict, key: str, options, default: str | None) -> str | None:
    value = payload.get(key)
    if value is None or value == "":
        return default
    if not isinstance(value, str) or value not in options:
        raise BadInput(f"unknown {key} {value!r}; choose one of {', '.join(options)}")
    return value


def sample_request(payload: dict, pipe, samplers: list[str], spacings: list[str],
                   limits: Limits) -> tuple[int, SampleSpec]:
    """A sampling request of the page -> (batch size, SampleSpec), checked against ``limits`` and
    against what the run takes (labels, prompts), so that no bad request reaches the queue."""
    if not isinstance(payload, dict):
        raise BadInput("the request must be a JSON object of settings")
    if len(pipe.shape) != 3:
        raise BadInput(f"this run draws {pipe.shape[0]}-D points, not images; the page shows images "
                       "(`undiffuse sample --run RUN` plots points)")
    if not pipe.can_generate:
        raise BadInput("this run cannot generate (a cold run without a generation prior); use Restore")
    n = integer(payload, "batch", 4, 1, limits.max_batch)
    if payload.get("class_label") not in (None, "") and not pipe.takes_labels:
        raise BadInput("this run is not class-conditional: it takes no class; leave class empty")
    labels = integer(payload, "class_label", None, 0, (pipe.num_classes or 1) - 1)
    prompt, negative = text(payload, "prompt", limits), text(payload, "negative_prompt", limits)
    if (prompt or negative) and not pipe.takes_prompts:
        raise BadInput("this run is not text-conditional: it takes no prompt; leave the prompts empty")
    try:
        spec = SampleSpec(sampler=choice(payload, "sampler", samplers, None),
                          num_inference_steps=integer(payload, "steps", None, None, limits.max_steps),
                          spacing=choice(payload, "spacing", spacings, None) if spacings else None,
                          seed=integer(payload, "seed", 0, 0, 2**63 - 1),
                          class_labels=labels, prompts=prompt, negative_prompt=negative,
                          guidance=number(payload, "guidance", 1.0),
                          bf16=PRECISIONS[choice(payload, "precision", list(PRECISIONS), "float32")])
        if not pipe.takes_prompts:  # the text encoder is not run here: that is the worker's job
            pipe.conditioning.condition(spec, n)
    except BadInput:
        raise
    except ValueError as e:
        raise BadInput(str(e)) from None
    return n, spec


def decode_upload(data: bytes, limits: Limits) -> Image.Image:
    """An uploaded picture decoded by Pillow, refused with a clear message when it is too large in
    bytes or in pixels (a decompression bomb) or is not one of ``UPLOAD_FORMATS``."""
    if len(data) > limits.max_upload_bytes:
        raise BadInput(f"the upload is {len(data)} bytes; the limit is {limits.max_upload_bytes} bytes", 413)
    if not data:
        raise BadInput("the upload is empty; choose a PNG or JPEG image")
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
            if img.width * img.height > min(limits.max_image_pixels, Image.MAX_IMAGE_PIXELS or 2**62):
                raise BadInput(f"the image is {img.width}x{img.height} pixels; the limit is "
                               f"{limits.max_image_pixels} pixels (resize it first)", 413)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadInput(f"the image is too large to decode safely ({e}); resize it first", 413) from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, BadInput):
            raise
        raise BadInput(f"cannot read the upload as an image ({', '.join(UPLOAD_FORMATS)}): {e}") from None
    return img


def as_run_image(img: Image.Image, shape: tuple[int, ...]) -> Tensor:
    """A decoded picture as one (1, C, H, W) image of the run's shape in [-1, 1]: centre square,
    resized, channels converted as training converts them."""
    from ..data.base import resize_images, set_channels, square_image

    if len(shape) != 3 or shape[1] != shape[2]:
        raise BadInput(f"this run's data are of shape {tuple(shape)}, not square images")
    return set_channels(resize_images(square_image(img), shape[1]), shape[0])


def built_in_image(shape: tuple[int, ...]) -> Tensor:
    """A test picture drawn here (a disc and a bar), so the ladder works without an upload."""
    size = 64
    img = Image.new("L", (size, size), 0)
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    draw.ellipse((10, 10, 44, 44), fill=255)
    draw.rectangle((40, 24, 56, 58), fill=160)
    return as_run_image(img, shape)

