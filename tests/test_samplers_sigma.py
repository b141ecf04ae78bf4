"""The sigma-space adapter (``undiffuse/samplers/sigma.py``) and the ODE/SDE samplers written on it.

* Every rewritten sampler gives the numbers of the frozen x_t-space code it replaced
  (``helpers_frozen_samplers``), to float64 rounding, on five processes and three spacings, with the
  same noise draws: final samples, and every callback (the same i and level t exactly, x in x_t and
  x0_hat). Measured max |difference| 7e-15 on states of size ~3 (3e-14 allowed); 2.4e-13 on the
  cosine schedules, whose first level has sigma / alpha = 2e4 (x~ ~ 1e4 there; 1e-12 allowed). In
  float32 the same runs agree to the float32 rounding of a few operations (1e-5 allowed).
* A partial solve (``ts`` ending above 0) hands back x_t, not x~.
* ``D`` evaluates the network at the levels of ``ts`` exactly; Heun's churned level is capped at
  the process's largest and evaluated exactly where ``reach`` put it.
"""
from __future__ import annotations

import pytest
import torch

from helpers_frozen_samplers import frozen
from helpers_mixture import F64, gen, mixture
from undiffuse.processes import DDPM, EDM, VE, VP
from undiffuse.samplers import SAMPLERS, timesteps
from undiffuse.samplers.sigma import to_sigma
from undiffuse.testing import OracleDenoiser

GMM = mixture()
PROCESSES = {"ddpm-lin": DDPM(1000, "linear"), "ddpm-cos": DDPM(1000, "cosine"), "vp-cos": VP("cosine"),
             "ve": VE(), "edm": EDM()}
REWRITTEN = ["euler", "euler_ancestral", "heun", "heun_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m",
             "dpmpp_3m_sde"]


class Recorder:
    """An oracle that records its calls (level, x_t)."""

    def __init__(self, process):
        self.oracle, self.process, self.calls = OracleDenoiser(GMM, process), process, []

    def __call__(self, xt, t, cond=None):
        self.calls.append((float(t), xt.clone()))
        return self.oracle(xt, t, cond)


def _both(name, process, ts, dtype=F64):
    """(new, old) runs: (output, callback records, network calls), from the same prior and noise."""
    x = process.prior((6, 2), gen(0), dtype=dtype, t=ts[0])
    runs = []
    for fn in (SAMPLERS[name], frozen(name)):
        seen, den = [], Recorder(process)
        out = fn(den, x, ts, generator=gen(1), callback=seen.append)
        runs.append((out, seen, den.calls))
    return runs


def _assert_same(new, old, atol):
    (out_n, seen_n, calls_n), (out_o, seen_o, calls_o) = new, old
    torch.testing.assert_close(out_n, out_o, rtol=0, atol=atol)
    assert [c[0] for c in calls_n] == [c[0] for c in calls_o]        # the same levels, exactly
    for (_, xn), (_, xo) in zip(calls_n, calls_o):
        torch.testing.assert_close(xn, xo, rtol=atol, atol=atol)
    assert [(r["i"], r["t"]) for r in seen_n] == [(r["i"], r["t"]) for r in seen_o]
    for rn, ro in zip(seen_n, seen_o):
        torch.testing.assert_close(rn["x"], ro["x"], rtol=atol, atol=atol)
        torch.testing.assert_close(rn["x0_hat"], ro["x0_hat"], rtol=atol, atol=atol)


@pytest.mark.parametrize("spacing", ["trailing", "karras", "logsnr"])
@pytest.mark.parametrize("pname", PROCESSES)
@pytest.mark.parametrize("name", REWRITTEN)
def test_rewritten_sampler_matches_frozen_xt_code(name, pname, spacing):
    process = PROCESSES[pname]
    ts = timesteps(process, 12, spacing)
    new, old = _both(name, process, ts)
    _assert_same(new, old, 1e-12 if "cos" in pname else 3e-14)


@pytest.mark.parametrize("name", REWRITTEN)
def test_rewritten_sampler_matches_frozen_code_in_float32_and_partial_solves(name):
    process = PROCESSES["ddpm-lin"]
    new, old = _both(name, process, timesteps(process, 10, "trailing"), dtype=torch.float32)
    assert new[0].dtype == torch.float32
    _assert_same(new, old, 1e-5)
    # a partial solve stops at x_t of its last level: the adapter scales x~ back
    ts = torch.tensor([1.0, 0.6, 0.3, 0.1], dtype=F64)
    new, old = _both(name, process, ts)
    _assert_same(new, old, 1e-13)
    assert float(new[0].abs().max()) > 0.5   # not collapsed to x0_hat: the state at t = 0.1


def test_adapter_scales_and_evaluates_at_the_grid_levels_exactly():
    process = DDPM(1000, "cosine")
    ts = timesteps(process, 7, "logsnr")
    den = Recorder(process)
    x = torch.randn(4, 2, generator=gen(2), dtype=F64)
    D, sigmas, x_scaled = to_sigma(den, x, ts)
    a, s = process.alpha_sigma(ts)
    torch.testing.assert_close(sigmas, s / a, rtol=0, atol=0)
    assert float(sigmas[-1]) == 0
    torch.testing.assert_close(x_scaled, x / a[0], rtol=1e-15, atol=0)
    for i in range(len(ts) - 1):
        D(x_scaled, sigmas[i])
    assert [c[0] for c in den.calls] == ts[:-1].tolist()
    torch.testing.assert_close(den.calls[0][1], x, rtol=1e-14, atol=1e-14)   # alpha x~ = x_t
    torch.testing.assert_close(D.to_x(x_scaled, sigmas[0]), x, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("process", [DDPM(1000, "linear"), EDM()], ids=["ddpm", "edm"])
def test_reach_caps_at_the_largest_level_and_is_evaluated_there_exactly(process):
    ts = timesteps(process, 5, "karras", sigma_max=None)
    den = Recorder(process)
    D, sigmas, x = to_sigma(den, torch.zeros(2, 2, dtype=F64), ts)
    top = D.reach(10 * sigmas[0])
    assert float(top) == pytest.approx(process.sigma_max(), rel=1e-12)
    inside = D.reach(sigmas[1] * 1.1)
    a, s = process.alpha_sigma(process.t_from_sigma(sigmas[1] * 1.1))
    torch.testing.assert_close(inside, s / a, rtol=1e-14, atol=0)
    D(x, inside)
    assert den.calls[-1][0] == float(process.t_from_sigma(sigmas[1] * 1.1))


def test_callback_reports_x_in_xt_space_with_its_level():
    """What the callback gets is what the network got: x_t and its level, for every evaluation step."""
    process = VP("cosine")
    ts = timesteps(process, 6, "trailing")
    for name in ["euler", "heun", "dpmpp_2m"]:
        den, seen = Recorder(process), []
        SAMPLERS[name](den, process.prior((3, 2), gen(4), dtype=F64), ts, callback=seen.append)
        calls = dict(den.calls[::2] if name == "heun" else den.calls)
        assert [r["t"] for r in seen] == ts[:-1].tolist()
        for r in seen:
            assert torch.equal(r["x"], calls[r["t"]])
