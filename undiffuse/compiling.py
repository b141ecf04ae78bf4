"""``torch.compile`` with a way back: compile a net in place, and run eagerly when compiling fails.

``nn.Module.compile`` compiles in place, so parameter names (and checkpoints) do not change and a
deep copy (the EMA) stays eager. Compilation happens at the first call, which is where most
failures show up (no C compiler, an inductor bug); ``call_or_fall_back`` catches them there.
Measured on 2 CPU cores it does not pay back in a demo run (docs/speed.md), so it is opt-in.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

from torch import nn

T = TypeVar("T")


def compile_net(net: nn.Module) -> bool:
    """``torch.compile`` (inductor) ``net`` in place; True on success, a warning and False if
    torch cannot even start (compilation itself comes at the first call)."""
    try:
        net.compile()
    except Exception as e:  # e.g. a torch build without inductor
        warnings.warn(f"torch.compile is unavailable ({type(e).__name__}: {e}); running eagerly. "
                      "Pass --no-compile (compile=False) to skip it", RuntimeWarning, stacklevel=2)
        return False
    return True


def uncompile(net: nn.Module) -> None:
    """Undo ``nn.Module.compile``: calls go to the eager forward again."""
    net._compiled_call_impl = None


def call_or_fall_back(fn: Callable[[], T], net: nn.Module, what: str, undo: Callable[[], None] = lambda: None,
                      keep: tuple[type[BaseException], ...] = ()) -> T:
    """``fn()``; if it raises (anything but ``keep``), warn, run ``net`` eagerly from now on, call
    ``undo`` (e.g. restore the random state the failed call consumed) and call ``fn`` again."""
    try:
        return fn()
    except keep:
        raise
    except Exception as e:  # inductor errors come in many types; any of them means "run eagerly"
        warnings.warn(f"torch.compile failed at the first call ({type(e).__name__}: {str(e)[:300]}); "
                      f"{what} eagerly instead. Pass --no-compile (compile=False) to skip compiling",
                      RuntimeWarning, stacklevel=3)
        uncompile(net)
        undo()
        return fn()
