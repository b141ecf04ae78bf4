"""A tiny deterministic text encoder for tests of text-conditional models, and a captioned dataset.

``FakeEncoder`` implements the ``undiffuse.text.TextEncoder`` protocol without any pretrained model:
a caption becomes [BOS] + one vector per word + [EOS] (the vectors seeded by the word's CRC32), padded
with zeros to ``max_length``; ``pooled`` is the mean of the real tokens. Importing this module
registers it in ``undiffuse.text.ENCODERS`` as ``fake-test``, so runs trained with it load by name.
"""
from __future__ import annotations

import zlib

import torch

from undiffuse.data import TensorData, load_dataset
from undiffuse.text.encoders import ENCODERS, TextEmbedding

FAKE = "fake-test"


class FakeEncoder:
    name = FAKE

    def __init__(self, dim: int = 16, max_length: int = 8) -> None:
        self.dim, self.max_length = dim, max_length
        self.calls = 0

    def _vector(self, word: str) -> torch.Tensor:
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(zlib.crc32(word.encode())))

    def encode(self, captions) -> TextEmbedding:
        self.calls += 1
        b, length = len(captions), self.max_length
        tokens, mask = torch.zeros(b, length, self.dim), torch.zeros(b, length, dtype=torch.bool)
        for i, caption in enumerate(captions):
            words = ["<bos>", *caption.split(), "<eos>"][:length]
            tokens[i, :len(words)] = torch.stack([self._vector(w) for w in words])
            mask[i, :len(words)] = True
        pooled = tokens.sum(1) / mask.sum(1, keepdim=True)
        return TextEmbedding(tokens, mask, pooled)


ENCODERS.setdefault(FAKE, FakeEncoder)

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def captioned_digits(n: int = 64) -> TensorData:
    """8x8 digits captioned "a handwritten seven" / "the digit 7": the cheapest captioned images."""
    data = load_dataset("digits", n=n, seed=0)
    data.captions = [f"a handwritten {DIGIT_WORDS[y]}" if i % 2 else f"the digit {y}"
                     for i, y in enumerate(data.labels.tolist())]
    return data
