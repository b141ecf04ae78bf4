"""Pixelate (super-resolution): average over 2^t x 2^t blocks and repeat each block mean over its
block (Bansal et al. 2022, sec. 4, "Super-Resolution").

``D(x0, t)`` average-pools ``x0`` by a factor 2^t (each step halves the resolution) and upsamples the
result back to full size with nearest-neighbour repetition. The paper's MNIST and CIFAR-10 runs use
T = 3 from 32 x 32 (down to 4 x 4 blocks of 8 x 8 pixels); its CelebA run T = 6 from 128 x 128.
T can be at most log2(size): at t = log2(size) one block covers the image and ``D`` is the
per-channel mean; larger t change nothing more.

Any size works: when 2^t does not divide the side, the last block along it is shorter and averages
the pixels it has. The operation is linear, ``x -> P_t^H x (P_t^W)^T`` with ``P_t`` the n x n
block-averaging matrix, so it is differentiable and per-image severities pick per-image matrices.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import SeparableDegradation


def block_matrices(n: int, t: int) -> tuple[Tensor, Tensor]:
    """(average, repeat) for one axis of length n and blocks of 2^t: average is (m, n) with rows
    summing to 1 over each block, repeat is (n, m) of 0/1; m = ceil(n / 2^t) blocks."""
    size = 2**t
    block = torch.arange(n) // size
    m = int(block.max()) + 1
    repeat = torch.zeros(n, m, dtype=torch.float64)
    repeat[torch.arange(n), block] = 1.0
    average = (repeat / repeat.sum(0, keepdim=True)).T.contiguous()
    return average, repeat


class Pixelate(SeparableDegradation):
    """Block averaging by 2^t (see the module docstring). Args: num_steps T (paper MNIST/CIFAR: 3)."""

    name = "pixelate"

    def __init__(self, num_steps: int = 3):
        super().__init__(num_steps)

    def settings(self) -> dict:
        return {"num_steps": self.num_steps}

    def axis_matrices(self, n: int) -> Tensor:
        """P_0 .. P_T for an axis of length n: (T + 1, n, n) float64, P_0 = I."""
        mats = []
        for t in range(self.num_steps + 1):
            avg, rep = block_matrices(n, t)
            mats.append(rep @ avg)
        return torch.stack(mats)

    def summarize(self, x_T: Tensor) -> Tensor:
        """The block means at t = T, (N, C * m_H * m_W)."""
        ah, _ = block_matrices(x_T.shape[-2], self.num_steps)
        aw, _ = block_matrices(x_T.shape[-1], self.num_steps)
        small = torch.einsum("ij,bcjk,lk->bcil", ah.to(x_T), x_T, aw.to(x_T))
        return small.flatten(1)

    def expand(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        c, h, w = shape
        _, rh = block_matrices(h, self.num_steps)
        _, rw = block_matrices(w, self.num_steps)
        small = z.reshape(z.shape[0], c, rh.shape[1], rw.shape[1])
        return torch.einsum("ij,bcjk,lk->bcil", rh.to(z), small, rw.to(z))
