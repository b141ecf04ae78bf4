"""``torch.compile`` with a way back: compile a net in place, and run eagerly when compiling fails;
and ``FastCopies``, the bf16 / compiled copies of a denoiser that sampling runs.

``nn.Module.compile`` compiles in place, so parameter names (and checkpoints) do not change and a
deep copy (the EMA) stays eager. Compilation happens at the first call, which is where most
failures show up (no C compiler, an inductor bug); ``call_or_fall_back`` catches them there.
Measured on 2 CPU cores it does not pay back in a demo run (docs/speed.md), so it is opt-in.
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

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


class FastCopies:
    """The denoiser to sample with: the one given, or a copy with bf16 weights and / or compiled.

    bf16 sampling keeps a bf16 copy of the weights (measured faster than casting them in every call
    under autocast, docs/speed.md); ``bf16_weights = False``: autocast alone, over the float32
    weights. Copies are cached per device until the weights change (their in-place version
    counters move: a pipeline shares its EMA with a training run that goes on)."""

    bf16_weights = True

    def __init__(self, denoiser):
        self.denoiser = denoiser
        self._copies: dict[tuple[bool, bool, torch.device], object] = {}
        self._version = -1

    def get(self, bf16: bool = False, compile: bool = False, device: torch.device | None = None):
        if not (bf16 and self.bf16_weights) and not compile:
            return self.denoiser
        version = sum(p._version for p in self.denoiser.parameters())
        if version != self._version:
            self._copies, self._version = {}, version
        key = (bf16 and self.bf16_weights, compile, device)
        if key not in self._copies:
            d = self.denoiser
            net = bf16_inference_copy(d.net) if key[0] else copy.deepcopy(d.net)
            fast = type(d)(net, d.process, d.prediction, sigma_data=d.sigma_data,
                           learn_variance=d.learn_variance, clip_x0=d.clip_x0).eval()
            if compile:
                compile_net(net)
                fast = EagerOnFailure(fast)
            self._copies[key] = fast
        return self._copies[key]


def bf16_inference_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net`` with bf16 weights for sampling under bf16 autocast, which then casts no
    weights. LayerNorms stay float32: they read float32 caption embeddings, and CPU layer_norm
    refuses float32 input with bf16 parameters."""
    net = copy.deepcopy(net).to(torch.bfloat16)
    for m in net.modules():
        if isinstance(m, nn.LayerNorm):
            m.float()
    return net


class EagerOnFailure:
    """A compiled denoiser that, if compiling fails at its first call, warns and runs eagerly."""

    def __init__(self, compiled):
        self.compiled, self.checked = compiled, False
        self.process, self.clip_x0 = compiled.process, compiled.clip_x0

    def __call__(self, xt: Tensor, t: Tensor, cond=None):
        if self.checked:
            return self.compiled(xt, t, cond)
        out = call_or_fall_back(lambda: self.compiled(xt, t, cond), self.compiled.net, "sampling")
        self.checked = True
        return out


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls and convolutions natively: a GPU that supports bf16,
    or a CPU with AVX-512 BF16 or AMX. Elsewhere bf16 is emulated and slower than float32, so the
    CLI's precision default (``bf16_by_default``) keeps float32 there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    from .distributed import cpu_model_and_features

    return device.type == "cpu" and bool({"avx512_bf16", "amx_bf16"} & set(cpu_model_and_features()[1]))


def bf16_by_default(cfg: dict, device) -> bool:
    """bf16 for a Gaussian pixel run, text-conditioned or not (where bf16 was measured, docs/speed.md),
    on a device that computes bf16 natively; cold and latent runs keep float32 unless asked (not
    measured there).
    ``cfg``: the run's config.json. The CLI's default, the web page's and the training pictures'."""
    from .cold import is_cold

    images = len(cfg.get("data", {}).get("shape", (1, 1, 1))) == 3  # not 2-D points (toy2d)
    measured = images and not is_cold(cfg["process"]) and not cfg.get("latent")
    return measured and native_bf16(device)
