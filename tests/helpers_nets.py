"""Network helpers shared by the net tests."""
from __future__ import annotations

import torch
from torch import nn


def unzeroed(net: nn.Module, seed: int = 0) -> nn.Module:
    """Re-initialise every conv and linear layer, undoing the zero-inits that make a fresh net's
    residual branches (and output) exactly zero, so tests see every path's effect."""
    torch.manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return net.eval()
