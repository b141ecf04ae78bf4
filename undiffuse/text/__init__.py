"""Text-to-image diffusion: prompts through a frozen pretrained encoder into cross-attention.

| module           | holds                                                                        |
|------------------|------------------------------------------------------------------------------|
| ``encoders.py``  | the encoders (all-MiniLM-L6-v2 by default), ``ENCODERS``, the caption cache  |
| ``objective.py`` | training: caption embeddings of the data, caption dropout, preview grids     |
| ``evaluate.py``  | prompt adherence and FID-style scores of a text run                          |
| ``cli.py``       | the ``undiffuse`` commands of text runs                                      |

This module re-exports the encoders' public names; the others import the training and sampling
layers, so import them from their modules.
"""
from .encoders import (DEFAULT_ENCODER, DEFAULT_MAX_LENGTH, ENCODERS, NULL_CAPTION, MiniLMEncoder, TextEmbedding,
                       TextEncoder, clear_caption_cache, encode_captions, get_encoder, text_cache_dir,
                       warm_caption_cache)

__all__ = ["DEFAULT_ENCODER", "DEFAULT_MAX_LENGTH", "ENCODERS", "NULL_CAPTION", "MiniLMEncoder", "TextEmbedding",
           "TextEncoder", "clear_caption_cache", "encode_captions", "get_encoder", "text_cache_dir",
           "warm_caption_cache"]
