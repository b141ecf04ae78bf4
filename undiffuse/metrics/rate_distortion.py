"""Progressive lossy compression with a DDPM: the rate–distortion curve of Ho et al. 2020, Sec. 4.3.

Algorithms 3-4 send x_N ~ q(x_N | x0) coded with p(x_N), then x_{N-1}, ..., each x_{n-1} coded with
p(x_{n-1} | x_n) at a cost of KL(q(x_{n-1} | x_n, x0) || p(x_{n-1} | x_n)) nats. A receiver holding
x_n has paid rate_n = L_T + sum_{m=n+1..N} L_{m-1} (the bound's terms "from L_T down to L_n") and
reconstructs x0_hat(x_n); distortion_n is its RMSE on the [0, 255] scale (Fig. 5). After L_0 the
receiver holds the 8-bit x0 itself: the last point, n = 0, has the full bound as rate and no distortion.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..viz import plot_curves
from .likelihood import bits_per_dim, vlb_bits_per_dim

__all__ = ["rate_distortion", "plot_rate_distortion"]

PIXEL_SCALE = 127.5  # [-1, 1] -> [0, 255]


@torch.no_grad()
def rate_distortion(denoiser, x0: Tensor, *, variance: str = "beta_tilde", cond: Tensor | None = None,
                    generator: torch.Generator | None = None, steps: int | None = None) -> dict:
    """Rate (bits/dim) and distortion (RMSE, [0, 255]) at each evaluated DDPM step, from one pass of
    ``vlb_bits_per_dim`` (Ho et al. 2020, Sec. 4.3, Algorithms 3-4, Fig. 5).

    x_n ~ q(x_n | x0) is drawn independently per step (the expected curve, as in the bound), and the
    same draw gives both that step's KL term and x0_hat(x_n). With ``steps`` the bound's stratified
    subset is used: each evaluated term stands for its whole stratum of steps, so the rate at an
    evaluated step is an approximation (the terms of its own stratum above it are left out).

    Returns a dict of tensors over steps ``n`` (M + 1,), descending from the first evaluated step to 0:
    ``rate`` and ``distortion`` (batch means of the per-sample bits/dim and RMSE), ``rate_per_sample`` and ``distortion_per_sample`` (B, M + 1),
    and ``vlb``, the underlying bound (its ``bpd_mean`` equals ``rate[-1]``).
    """
    vlb = vlb_bits_per_dim(denoiser, x0, variance=variance, cond=cond, steps=steps, generator=generator)
    weighted = vlb["terms"] * vlb["weights"]
    # Holding x_n means every term that sent x_{n'} with n' >= n is paid: a cumulative sum that
    # excludes the step's own term (which sends x_{n-1}) and, at n = 0, includes the decoder.
    paid = torch.cat([torch.zeros_like(weighted[:, :1]), weighted.cumsum(1)], 1)
    rate = bits_per_dim(vlb["prior"][:, None] + paid, vlb["dim"])
    rmse = vlb["x0_mse"].sqrt() * PIXEL_SCALE
    distortion = torch.cat([rmse, torch.zeros_like(rmse[:, :1])], 1)
    n = torch.cat([vlb["n"], torch.zeros(1, dtype=vlb["n"].dtype)])
    return {"n": n, "rate": rate.mean(0), "distortion": distortion.mean(0), "rate_per_sample": rate,
            "distortion_per_sample": distortion, "vlb": vlb}


def plot_rate_distortion(result: dict, path: str | Path) -> list[Path]:
    """Ho et al. 2020, Fig. 5 as three PNGs: distortion vs rate at ``path``, and rate and distortion
    vs step next to it (``<stem>_rate``, ``<stem>_distortion``). Returns the paths written."""
    path = Path(path)
    n = result["n"].tolist()
    rate, distortion = result["rate"].tolist(), result["distortion"].tolist()
    side = lambda tag: path.with_name(f"{path.stem}_{tag}{path.suffix or '.png'}")  # noqa: E731
    return [
        plot_curves(rate, {"distortion": distortion}, path, "rate (bits/dim)", "distortion (RMSE, [0, 255])",
                    title="rate-distortion"),
        plot_curves(n, {"rate": rate}, side("rate"), "reverse step n", "rate (bits/dim)"),
        plot_curves(n, {"distortion": distortion}, side("distortion"), "reverse step n",
                    "distortion (RMSE, [0, 255])"),
    ]
