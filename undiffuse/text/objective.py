"""Text-to-image runs in the shared Trainer: the captions' embeddings, caption dropout, prompt grids.

``undiffuse train --data shapes --text`` (or ``--data mnist --text``, or an image folder with
captions) trains a U-Net that cross-attends to the token embeddings of each image's caption and
adds the pooled embedding to its noise embedding (``undiffuse.nets``). The text encoder is frozen
and outside the model (``undiffuse.text``): every unique caption is embedded once, before training,
and cached on disk under ``text_cache_dir()`` (``~/.cache/undiffuse/text``), so a run directory
stays small and a resumed or repeated run reads the same embeddings back.

Caption dropout (GLIDE, Nichol et al. 2022, sec. 2.3: 20 % of captions replaced by the empty
sequence) trains the same model on ``NULL_CAPTION``, so it also predicts the unconditional score
that classifier-free guidance needs. ``Trainer.train_step`` draws the dropout of the whole global
batch from its generator where a class-conditional run draws label dropout (before t and the
noise), and each process keeps its share: the draws do not depend on the number of processes and a
resumed run replays them exactly.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from ..data import TensorData

__all__ = ["CaptionEmbedder", "caption_embedder", "preview_prompts", "prompt_grid",
           "write_text_samples", "PREVIEW_PROMPTS"]

#: Rows (prompts) of the grids written during training.
PREVIEW_PROMPTS = 8


class CaptionEmbedder:
    """A dataset's captions through a frozen encoder: ``embed(idx, drop)`` gives the embeddings of
    items ``idx``, with the empty caption where ``drop`` is True."""

    def __init__(self, encoder, captions: list[str], cache_dir: str | Path | None = None) -> None:
        from .encoders import NULL_CAPTION, warm_caption_cache

        self.encoder, self.captions, self.null_caption = encoder, captions, NULL_CAPTION
        # Once, up front: each unique caption (and the null one) is embedded or read from the cache.
        self.num_unique = warm_caption_cache(encoder, [*captions, NULL_CAPTION], cache_dir)

    def embed(self, idx: Tensor, drop: Tensor):
        from .encoders import encode_captions

        chosen = [self.null_caption if d else self.captions[i] for i, d in zip(idx.tolist(), drop.tolist())]
        return encode_captions(self.encoder, chosen)  # memory-cache hits after warm-up

    def config(self) -> dict:
        """What ``undiffuse.load`` needs to rebuild the encoder for prompts."""
        return {"encoder": self.encoder.name, "max_length": self.encoder.max_length, "dim": self.encoder.dim}


def caption_embedder(cfg, data: TensorData, encoder=None) -> CaptionEmbedder:
    """Check that a text run can train on ``data`` and embed its captions (``encoder``: an encoder
    object to use instead of ``get_encoder(cfg.text_encoder)``, e.g. in tests)."""
    from .encoders import get_encoder, text_cache_dir

    if data.x.ndim != 4:
        raise ValueError(f"--text conditions an image U-Net, but {data.name} holds {data.x.shape[1]}-D points; "
                         "use an image dataset with captions (--data shapes, --data mnist)")
    captions = getattr(data, "captions", None)
    if captions is None:
        raise ValueError(f"--text needs captions, but the dataset {data.name!r} has none; use --data shapes or "
                         "--data mnist (captioned), or an image folder with a .txt caption beside each image or "
                         "a metadata.jsonl with file_name and text columns; or drop --text")
    if encoder is None:
        # Loading a pretrained model may draw from torch's global RNG (random init before the weights
        # arrive): fork it, so the U-Net's initial weights do not depend on whether it was loaded before.
        with torch.random.fork_rng(devices=[]):
            encoder = get_encoder(cfg.text_encoder)
    return CaptionEmbedder(encoder, list(captions), text_cache_dir())


def preview_prompts(data: TensorData, k: int = PREVIEW_PROMPTS, seed: int = 0) -> list[str]:
    """``k`` prompts for the grids, the same at every grid: for the built-in captioned data its
    evaluation prompts (shapes: half of them on colour x shape pairs held out of training, last;
    mnist: digits 0, 1, ... with a stated stroke), else ``k`` distinct captions in a seeded order."""
    if data.name == "shapes":
        from ..data import shapes_prompts

        held = k // 2
        return [p.text for p in shapes_prompts("seen", k - held, seed)] + \
               [p.text for p in shapes_prompts("heldout", held, seed)]
    if data.name == "mnist":
        from ..data import mnist_prompts

        return [p.text for p in mnist_prompts(k, seed)]
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    return list(dict.fromkeys(data.captions[i] for i in order if data.captions[i]))[:k]


def prompt_grid(pipe, prompts: list[str], per_prompt: int, path: str | Path, spec=None, **settings) -> Path:
    """Prompts (rows) x seeds (columns): each row is drawn with the same seed, so column j starts
    from the same noise in every row and the rows differ only by their prompt."""
    from ..viz import save_labelled_grid

    rows = [pipe.sample(per_prompt, spec, prompts=p, **settings) for p in prompts]
    return save_labelled_grid(rows, path, row_labels=prompts)


def write_text_samples(trainer, pipe, tag: str) -> Path:
    """``samples/TAG.png``: a grid of preview prompts (rows) x seeds drawn by ``pipe`` (the trainer's
    EMA pipeline), with the configured guidance; about as many rows as columns for small grids, at
    most ``PREVIEW_PROMPTS`` rows."""
    cfg = trainer.cfg
    rows = min(PREVIEW_PROMPTS, max(1, round(math.sqrt(cfg.num_samples))))
    prompts = preview_prompts(trainer.data, rows, seed=cfg.seed)
    per_prompt = max(1, cfg.num_samples // max(1, len(prompts)))
    return prompt_grid(pipe, prompts, per_prompt, trainer.run_dir / "samples" / f"{tag}.png",
                       sampler=cfg.sampler, num_inference_steps=cfg.sample_steps, seed=cfg.seed,
                       guidance=cfg.guidance)
