"""Captions for a folder of images, in the two layouts people already use.

* ``metadata.jsonl`` (the Hugging Face ``imagefolder`` layout, https://huggingface.co/docs/datasets/
  image_dataset#imagefolder): one JSON object per line with ``file_name`` (relative to the folder
  holding the metadata file) and a ``text`` column. Metadata files in sub-folders are read too.
* a ``.txt`` file beside each image with the same stem (``cat.png`` + ``cat.txt``), the layout of
  kohya-ss / many fine-tuning scripts; its text is stripped and its whitespace (newlines
  included) collapsed to single spaces.

When any ``metadata.jsonl`` exists it is the source of every caption (as in Hugging Face's loader,
where metadata takes precedence), otherwise the ``.txt`` files are.

A missing or empty caption is a DataError naming the files, unless ``on_missing_caption`` is
``"warn"`` (one warning with the count; the image is kept with the empty caption, which trains the
unconditional model like caption dropout) or ``"skip"`` (one warning with the count; the image is
left out).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from .base import DataError

__all__ = ["ON_MISSING_CAPTION_CHOICES", "METADATA_FILE", "read_captions", "apply_caption_policy"]

ON_MISSING_CAPTION_CHOICES = ("error", "warn", "skip")
METADATA_FILE = "metadata.jsonl"


def read_captions(root: Path, files: list[Path], column: str = "text") -> dict[Path, str]:
    """The caption of every image in ``files`` that has one (empty captions included, as "")."""
    metadata = sorted(p for p in root.rglob(METADATA_FILE)
                      if not any(part.startswith(".") for part in p.relative_to(root).parts))
    if metadata:
        known = set(files)
        captions: dict[Path, str] = {}
        for meta in metadata:
            captions.update(_read_jsonl(meta, column, known))
        return captions
    return {f: _clean(_read_utf8(f.with_suffix(".txt")))
            for f in files if f.with_suffix(".txt").is_file()}


def _clean(text: str) -> str:
    return " ".join(text.split())


def _read_utf8(path: Path) -> str:
    """The text of ``path``; undecodable bytes are a DataError naming the file (and where)."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8") from None


def _read_jsonl(meta: Path, column: str, known: set[Path]) -> dict[Path, str]:
    """Captions from one metadata.jsonl; every malformed line is an error naming the file and line."""
    captions = {}
    for number, line in enumerate(_read_utf8(meta).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{meta}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where} is not valid JSON ({err.msg}); each line must be one object like "
                            '{"file_name": "cat.png", "text": "a cat"}') from None
        if not isinstance(row, dict) or "file_name" not in row or column not in row:
            raise DataError(f"{where} needs the keys 'file_name' and {column!r}, got "
                            f"{sorted(row) if isinstance(row, dict) else type(row).__name__}; fix the line "
                            "(or name the caption column with caption_column=...)")
        for key in ("file_name", column):
            if not isinstance(row[key], str):
                raise DataError(f"{where}: {key!r} must be a string, got {json.dumps(row[key])}")
        path = Path(os.path.normpath(meta.parent / row["file_name"]))  # like find_images: no symlink resolution
        if path not in known:
            raise DataError(f"{where} names {row['file_name']!r}, but there is no such image under "
                            f"{meta.parent}; fix the file name or delete the line")
        if path in captions:
            raise DataError(f"{where} gives a second caption for {row['file_name']!r}; keep one line per image")
        captions[path] = _clean(row[column])
    return captions


def apply_caption_policy(root: Path, files: list[Path], captions: dict[Path, str],
                         on_missing: str) -> tuple[list[Path], dict[Path, str]]:
    """The files to load and their captions, after handling missing or empty captions per ``on_missing``."""
    if on_missing not in ON_MISSING_CAPTION_CHOICES:
        raise DataError(f"on_missing_caption must be one of {ON_MISSING_CAPTION_CHOICES}, got {on_missing!r}")
    missing = [f for f in files if not captions.get(f)]
    if not missing:
        return files, captions
    names = [str(f.relative_to(root)) for f in missing]
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    what = f"{len(missing)} of {len(files)} images under {root} have no caption or an empty one: {shown}"
    if on_missing == "error":
        raise DataError(f"{what}; write each caption into a .txt file beside its image (same name), or a "
                        f'line {{"file_name": ..., "text": ...}} in {METADATA_FILE}; or pass '
                        "on_missing_caption='warn' to keep them with the empty caption, or 'skip' to leave them out")
    if on_missing == "skip":
        if len(missing) == len(files):
            raise DataError(f"{what}; with on_missing_caption='skip' nothing is left to load")
        warnings.warn(f"{what}; left out (on_missing_caption='skip')", stacklevel=4)
        drop = set(missing)
        return [f for f in files if f not in drop], captions
    warnings.warn(f"{what}; kept with the empty caption (on_missing_caption='warn')", stacklevel=4)
    return files, {**captions, **{f: "" for f in missing}}
