"""A frozen copy of the ODE/SDE samplers as they were before the sigma-space adapter (issue #17):
every step written in x_t with (alpha, s = sigma / alpha) looked up at each level. Kept only to
check that the rewrite (``undiffuse/samplers/sigma.py`` and the loops over sigmas) gives the same
numbers; do not import outside tests. ``frozen(name)`` is the old sampler of that registry name.
"""
from __future__ import annotations

import math

import torch

from undiffuse.processes.gaussian import bcast
from undiffuse.samplers import noise_like
from undiffuse.samplers.base import report as _report
from undiffuse.samplers.base import run_steps as _run  # the x_t loop, unchanged by the rewrite
from undiffuse.samplers.dpm_solver import _weights, step_orders

F64 = torch.float64


def _scaled(process, t):
    a, sig = process.alpha_sigma(torch.as_tensor(t, dtype=F64))
    return a, sig / a


def old_euler(den, x, ts, cond=None, generator=None, callback=None, eta=0.0):
    """Euler (eta = 0) and Euler-ancestral, as before."""
    p = den.process

    def step(x, t, s, pred):
        (a_t, s_t), (a_s, s_s) = _scaled(p, t), _scaled(p, s)
        s_up = torch.minimum(s_s, eta * (s_s**2 * (s_t**2 - s_s**2) / s_t**2).sqrt())
        s_down = (s_s**2 - s_up**2).sqrt()
        x_scaled = x / bcast(a_t, x) + bcast(s_down - s_t, x) * pred.eps
        return bcast(a_s, x) * (x_scaled + bcast(s_up, x) * noise_like(x, generator) if eta else x_scaled)

    return _run(den, x, ts, cond, callback, step)


def old_heun(den, x, ts, cond=None, generator=None, callback=None, s_churn=0.0, s_tmin=0.0,
             s_tmax=math.inf, s_noise=1.0):
    p, n = den.process, len(ts) - 1
    gamma_max = min(s_churn / n, math.sqrt(2) - 1)
    for i in range(n):
        t, t_next = ts[i], ts[i + 1]
        (a_t, s_t), (a_next, s_next) = _scaled(p, t), _scaled(p, t_next)
        x_scaled = x / a_t
        gamma = gamma_max if s_churn > 0 and s_tmin <= float(s_t) <= s_tmax else 0.0
        if gamma > 0:
            t = p.t_from_sigma((s_t * (1 + gamma)).clamp(max=p.sigma_max()))
            a_hat, s_hat = _scaled(p, t)
            x_scaled = x_scaled + float((s_hat**2 - s_t**2).sqrt() * s_noise) * noise_like(x, generator)
            a_t, s_t = a_hat, s_hat
        x_in = x_scaled * a_t
        pred = den(x_in, t, cond)
        _report(callback, i, t, x_in, pred)
        if float(t_next) == 0:
            return pred.x0
        x_euler = x_scaled + float(s_next - s_t) * pred.eps
        eps_next = den(x_euler * a_next, t_next, cond).eps
        x = a_next * (x_scaled + float(s_next - s_t) * (pred.eps + eps_next) / 2)
    return x


def old_multistep(den, x, ts, cond=None, generator=None, callback=None, *, order, eta, midpoint,
                  lower_order_final=True):
    p = den.process
    orders = iter(step_orders(p, ts, order, lower_order_final))
    history = []

    def step(x, t, s, pred):
        (a_t, s_t), (a_s, s_s) = _scaled(p, t), _scaled(p, s)
        lam_t, lam_s = -math.log(float(s_t)), -math.log(float(s_s))
        h = lam_s - lam_t
        history.insert(0, (lam_t, pred.x0))
        del history[order:]
        k = next(orders)
        c0, c1, c2 = _weights(h, eta)
        x_scaled = math.exp(-(1 + eta) * h) * (x / bcast(a_t, x)) + c0 * pred.x0
        if k >= 2:
            (_, d0), (lam_1, d1) = history[0], history[1]
            h1 = lam_t - lam_1
            f01 = (d0 - d1) / h1
            if midpoint:
                x_scaled = x_scaled + (0.5 * c0 * h) * f01
            elif k == 2:
                x_scaled = x_scaled + c1 * f01
            else:
                lam_2, d2 = history[2]
                h2 = lam_1 - lam_2
                f012 = (f01 - (d1 - d2) / h2) / (h1 + h2)
                x_scaled = x_scaled + c1 * (f01 + h1 * f012) + c2 * f012
        if eta > 0:
            x_scaled = x_scaled + float(s_s) * math.sqrt(-math.expm1(-2 * eta * h)) * noise_like(x, generator)
        return bcast(a_s, x) * x_scaled

    return _run(den, x, ts, cond, callback, step)


def frozen(name: str):
    """The old sampler registered as ``name``, with its registry options."""
    multistep = {"dpmpp_2m": (2, 0.0, True), "dpmpp_2m_sde": (2, 1.0, True),
                 "dpmpp_3m": (3, 0.0, False), "dpmpp_3m_sde": (3, 1.0, False)}
    if name in multistep:
        order, eta, midpoint = multistep[name]
        return lambda *a, **kw: old_multistep(*a, order=order, eta=eta, midpoint=midpoint, **kw)
    if name == "euler_ancestral":
        return lambda *a, **kw: old_euler(*a, eta=1.0, **kw)
    if name == "heun_sde":
        return lambda *a, **kw: old_heun(*a, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003, **kw)
    return {"euler": old_euler, "heun": old_heun}[name]
