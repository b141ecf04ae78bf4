"""The helper nets of the metrics (FID feature nets, adherence judges): trained once, then cached."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from torch import nn

from ..checkpoint import load_cached_net, save_cached_net

__all__ = ["cached_net"]


def cached_net(cls: type[nn.Module], directory: Path, version: str, train: Callable[[], tuple[nn.Module, dict]],
               what: str) -> tuple[nn.Module, dict]:
    """The ``cls`` net cached in ``directory`` (eval mode) and its info, else ``train()`` it and cache it.

    The cache holds ``model.safetensors`` and ``info.json`` (the info plus the net's config and
    ``version``). A cache that cannot be read (corrupt file, other version) is reported with a
    warning naming ``what`` and retrained rather than trusted.
    """
    if (directory / "info.json").exists():
        try:
            return load_cached_net(cls, directory, version)
        except Exception as err:  # any unreadable cache is retrained rather than trusted
            warnings.warn(f"{what} cache {directory} is unusable ({type(err).__name__}: {err}); retraining",
                          stacklevel=3)
    net, info = train()
    info = {**info, "config": net.config, "version": version}
    save_cached_net(net, info, directory)
    return net, info
