"""Blur: t successive depthwise Gaussian convolutions (Bansal et al. 2022, sec. 4 "Deblurring"
and sec. 5 "Cold generation"; hyperparameters from their appendix and official code).

``D(x0, t) = G_t * ... * G_1 * x0`` with ``G_i`` a normalised ``k x k`` Gaussian kernel of standard
deviation ``sigma_i`` applied to every channel separately, with circular or reflect padding.

Defaults are the paper's MNIST deblurring setting: T = 20 steps of an 11 x 11 kernel with sigma = 7
and circular padding (the official README: ``mnist_train.py --time_steps 20 --blur_size 11
--blur_std 7.0 --blur_routine Constant``). The per-step sigma schedules of the official code map to
``schedule`` and ``growth`` as follows (i = 1..T):

* ``constant``:    sigma_i = sigma                              (MNIST: sigma 7);
* ``linear``:      sigma_i = sigma + growth (i - 1), growth defaults to sigma, i.e. sigma_i = i sigma
  (the official "Incremental" routine); CIFAR-10's "Special_6_routine" is sigma = 0.35,
  growth = 0.01, reflect padding, T = 50;
* ``exponential``: sigma_i = sigma exp(growth (i - 1)); the official "Exponential" routine for
  CelebA/AFHQ generation is sigma = 1, growth = 0.01, T = 300, 27 x 27 kernel (circular).

Implementation. A 2-D Gaussian kernel is the outer product of two 1-D ones, and both paddings act
on each axis separately, so one step is ``x -> C_i^H x (C_i^W)^T`` with ``C_i`` the n x n matrix of the
padded 1-D convolution. The matrices of all T steps are multiplied once (cumulative products
``A_t = C_t ... C_1``, float64, cached per image size), and ``D(x0, t)`` is two small matrix products
whatever t is: per-image severities just pick per-image matrices. This is exact (up to float
rounding) for any kernel size, also one wider than the image: circular padding wraps the kernel
around; reflect padding is circular convolution on the mirrored signal of period 2(n - 1) (PyTorch's
"reflect", which does not repeat the edge pixel), which is what t padded convolutions compute too.
Training refuses a kernel wider than its images all the same (``checks.check_data_fits``): that is
almost always a setting meant for larger images (the paper's 11 x 11 on 8 x 8 digits).

End state. With circular padding each step keeps every channel's mean and damps every other
frequency, so ``D(x0, t)`` tends to the per-channel mean image as t grows; ``mean_residual(H, W)``
gives the factor left after T steps (``||D(x, T) - mean|| <= factor ||x - mean||``). With reflect
padding the limit is a weighted mean in which the border rows and columns weigh half.
The paper's MNIST kernel (sigma 7 in an 11-wide window) is nearly a box filter, some of whose
frequency gains are slightly negative: the distance ``|D(x0, t) - x0|`` then grows with t on average
but may wobble by a hair for single images; Gaussian-shaped kernels (k >= 6 sigma) are monotone.
``mean_at_end=True`` makes ``D(x0, T)`` exactly the per-channel mean, as the official code's
``--discrete`` generation mode does, so that generation can start from a constant image.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import SeparableDegradation

SCHEDULES = ("constant", "linear", "exponential")
PADDINGS = ("circular", "reflect")


def gaussian_kernel1d(size: int, sigma: float) -> Tensor:
    """Normalised samples of exp(-k^2 / (2 sigma^2)) at k = -(size-1)/2 .. (size-1)/2 (float64)."""
    k = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-k**2 / (2 * sigma**2))
    return g / g.sum()


def _reflect_index(j: Tensor, n: int) -> Tensor:
    """Index j of the whole-sample symmetric extension of a length-n signal (period 2(n - 1))."""
    if n == 1:
        return torch.zeros_like(j)
    period = 2 * (n - 1)
    j = j % period
    return torch.where(j >= n, period - j, j)


def conv_matrix(kernel: Tensor, n: int, padding: str) -> Tensor:
    """The n x n matrix of the 'same' 1-D convolution with a symmetric odd ``kernel`` and
    ``padding`` "circular" or "reflect" (PyTorch's modes), for any kernel length."""
    r = (len(kernel) - 1) // 2
    i = torch.arange(n).unsqueeze(1)
    offsets = torch.arange(-r, r + 1).unsqueeze(0)
    j = (i + offsets) % n if padding == "circular" else _reflect_index(i + offsets, n)
    m = torch.zeros(n, n, dtype=torch.float64)
    m.index_put_((i.expand_as(j), j), kernel.expand_as(j).clone(), accumulate=True)
    return m


class Blur(SeparableDegradation):
    """t successive Gaussian blurs (see the module docstring for the paper's settings).

    Args:
        num_steps: T (paper MNIST: 20).
        kernel_size: odd kernel width k (paper MNIST: 11).
        sigma: the kernel's standard deviation, or the first one of a schedule (paper MNIST: 7).
        schedule: "constant", "linear" or "exponential" per-step sigma (see above).
        growth: slope (linear) or rate (exponential); None: sigma for linear, 0.01 for exponential.
        padding: "circular" (paper MNIST and generation) or "reflect" (paper CIFAR-10, CelebA).
        mean_at_end: D(x0, T) is exactly the per-channel mean (the official ``--discrete`` mode).
        summary_modes: what generation's prior is fitted to (``summarize``): 0, the per-channel
            means (the paper's); K > 0, the (2K + 1)^2 lowest Fourier modes per channel, where the
            little that heavy circular blur leaves of the digit lives (``fourier_basis``).
    """

    name = "blur"

    def __init__(self, num_steps: int = 20, kernel_size: int = 11, sigma: float = 7.0,
                 schedule: str = "constant", growth: float | None = None, padding: str = "circular",
                 mean_at_end: bool = False, summary_modes: int = 0):
        super().__init__(num_steps)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"blur: kernel_size must be odd and positive, got {kernel_size}")
        if schedule not in SCHEDULES:
            raise ValueError(f"blur: unknown sigma schedule {schedule!r}; choose one of {SCHEDULES}")
        if padding not in PADDINGS:
            raise ValueError(f"blur: unknown padding {padding!r}; choose one of {PADDINGS}")
        self.kernel_size, self.sigma, self.schedule = int(kernel_size), float(sigma), schedule
        self.growth = None if growth is None else float(growth)
        self.padding, self.mean_at_end = padding, bool(mean_at_end)
        if summary_modes < 0:
            raise ValueError(f"blur: summary_modes must be >= 0 (0: the channel means), got {summary_modes}")
        self.summary_modes = int(summary_modes)
        if min(self.sigmas()) <= 0:
            raise ValueError(f"blur: every step needs sigma > 0, got {self.sigmas()}")

    def settings(self) -> dict:
        return {"num_steps": self.num_steps, "kernel_size": self.kernel_size, "sigma": self.sigma,
                "schedule": self.schedule, "growth": self.growth, "padding": self.padding,
                "mean_at_end": self.mean_at_end, "summary_modes": self.summary_modes}

    def sigmas(self) -> list[float]:
        """sigma_1 .. sigma_T."""
        i = torch.arange(self.num_steps, dtype=torch.float64)  # i - 1 for steps 1..T
        if self.schedule == "constant":
            s = torch.full_like(i, self.sigma)
        elif self.schedule == "linear":
            s = self.sigma + (self.sigma if self.growth is None else self.growth) * i
        else:
            s = self.sigma * torch.exp((0.01 if self.growth is None else self.growth) * i)
        return s.tolist()

    def axis_matrices(self, n: int) -> Tensor:
        """A_0 .. A_T for one axis of length n: (T + 1, n, n) float64, A_0 = I."""
        mats = [torch.eye(n, dtype=torch.float64)]
        for s in self.sigmas():
            c = conv_matrix(gaussian_kernel1d(self.kernel_size, s), n, self.padding)
            mats.append(c @ mats[-1])
        if self.mean_at_end:
            mats[-1] = torch.full((n, n), 1.0 / n, dtype=torch.float64)
        return torch.stack(mats)

    def mean_residual(self, height: int, width: int) -> float:
        """The factor f with ``||D(x, T) - m(x)|| <= f ||x - m(x)||`` per channel, m(x) the channel
        mean (circular padding; 0 with ``mean_at_end``): the largest gain of A_T^H (x) A_T^W away
        from the constant image, max over the axes of ||A_T - 11^T / n||_2."""
        if self.padding != "circular":
            raise ValueError("blur: the limit is the plain channel mean only with circular padding")
        gains = []
        for n in (height, width):
            a = self.matrices(n)[-1]
            gains.append(float(torch.linalg.matrix_norm(a - 1.0 / n, ord=2)))
        return max(gains)

    def summarize(self, x_T: Tensor) -> Tensor:
        """The per-channel means (N, C): what the fully blurred image is (circular padding); with
        ``summary_modes`` K > 0 the coefficients on ``fourier_basis`` (N, C (2K + 1)^2) instead:
        circular blur only scales each of these modes, so they carry what survives of x0."""
        if not self.summary_modes:
            return x_T.mean(dim=(-2, -1))
        basis = fourier_basis(self.summary_modes, *x_T.shape[-2:]).to(x_T)
        return (x_T.flatten(2) @ basis.T).flatten(1)

    @property
    def summary_scales_differ(self) -> bool:
        return self.summary_modes > 0

    def expand(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        if not self.summary_modes:
            return z[:, :, None, None].expand(z.shape[0], *shape).contiguous()
        c, h, w = shape
        basis = fourier_basis(self.summary_modes, h, w).to(z)
        return (z.reshape(z.shape[0], c, -1) @ basis).reshape(z.shape[0], c, h, w)


def fourier_basis(k: int, height: int, width: int) -> Tensor:
    """The (2k + 1)^2 real Fourier modes of lowest frequency on an H x W grid, orthonormal rows
    ((2k + 1)^2, H W): products of the 1-D modes 1, cos(2 pi f i / n), sin(2 pi f i / n), f = 1..k.
    Each cos/sin pair spans an eigenspace of every symmetric circular convolution."""
    if 2 * k >= min(height, width):
        raise ValueError(f"blur: summary_modes {k} needs images wider than {2 * k} pixels, got {height} x {width}")

    def modes(n: int) -> Tensor:
        i = torch.arange(n, dtype=torch.float64)
        rows = [torch.full((n,), n ** -0.5, dtype=torch.float64)]
        for f in range(1, k + 1):
            rows += [torch.cos(2 * torch.pi * f * i / n) * (2 / n) ** 0.5,
                     torch.sin(2 * torch.pi * f * i / n) * (2 / n) ** 0.5]
        return torch.stack(rows)

    return torch.einsum("ah,bw->abhw", modes(height), modes(width)).reshape(-1, height * width)


def blur_reference(x0: Tensor, t: int, blur: Blur) -> Tensor:
    """``t`` plain ``F.conv2d`` passes with explicit padding: what ``Blur`` must equal (for tests and
    as documentation). Needs kernel_size // 2 < H, W for reflect padding (PyTorch's limit)."""
    import torch.nn.functional as F

    c = x0.shape[1]
    r = blur.kernel_size // 2
    x = x0
    for s in blur.sigmas()[:t]:
        g = gaussian_kernel1d(blur.kernel_size, s).to(x0)
        w = torch.outer(g, g).expand(c, 1, -1, -1)
        x = F.conv2d(F.pad(x, (r, r, r, r), mode=blur.padding), w, groups=c)
    if blur.mean_at_end and t == blur.num_steps:
        x = x.mean(dim=(-2, -1), keepdim=True).expand_as(x0)
    return x


__all__ = ["Blur", "gaussian_kernel1d", "conv_matrix", "blur_reference", "fourier_basis", "SCHEDULES",
           "PADDINGS"]
