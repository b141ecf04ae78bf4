"""Checks shared by the command-line tests: a PNG was written, an error was reported cleanly."""
from __future__ import annotations

from pathlib import Path

from PIL import Image


def assert_png(path: Path) -> tuple[int, int]:
    """The file is a readable PNG; returns its (width, height)."""
    assert path.is_file(), path
    with Image.open(path) as img:
        assert img.format == "PNG"
        img.load()
        return img.size


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    """Exit code 2, one `error:` line naming what is wrong, and no traceback."""
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith("error: "), err
    assert "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
