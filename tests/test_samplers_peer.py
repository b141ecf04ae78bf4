"""Peer checks: undiffuse's samplers against Hugging Face diffusers' schedulers.

Both libraries are driven by the same eps-prediction function, the exact Gaussian-mixture oracle
(``undiffuse.testing.OracleDenoiser``) on the 2-D mixture of ``test_samplers_core``, and by the same
noise. Every network evaluation is compared (the level it is made at and its input x_t: diffusers'
Euler-type schedulers hand the model ``scale_model_input(x~) = x~ / sqrt(sigma^2 + 1)``, which is x_t),
then the final sample. Diffusers is driven by its documented loop::

    latents = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = eps_fn(scheduler.scale_model_input(latents, t), t)
        latents = scheduler.step(eps, t, latents, ...).prev_sample

How the two are lined up:

* Process: ``DDPM(1000, "linear")`` has diffusers' ``beta_schedule="linear"`` betas (1e-4..0.02; passed
  explicitly, since Heun's defaults are Stable Diffusion's 0.00085..0.012) and ``DDPM(1000, "cosine")``
  has ``"squaredcos_cap_v2"``'s (to 2e-16).
* Levels: diffusers' 0-based timestep n is our level t = (n + 1) / N, so the oracle adapter for diffusers
  is ``eps_fn(x, n) = oracle(x, (n + 1) / N).eps``; our samplers call the oracle directly, on the levels of
  our own ``timesteps(process, steps, spacing)`` wherever a spacing reproduces diffusers' (trailing;
  linspace; leading with steps_offset=0).
* Precision: diffusers builds its tables (betas, alphas_cumprod, sigmas) in float32, and Euler,
  Euler-ancestral and DPM-Solver cast the state to float32 in every step (DPM-Solver's SDE noise too).
  ``float64_diffusers(cls)`` runs the scheduler's own module with its ``torch``/``np`` globals wrapped so
  that ``float32`` names float64: diffusers' code, unchanged, in double precision. Then the trajectories
  agree to ~1e-14 (max abs difference, states of size ~3; 9e-13 over 1000 DDPM steps). As shipped
  (float32) they agree to ~1e-6 (DDPM's posterior coefficients: ~1e-5; ``test_agrees_as_shipped``).
* Noise: a CPU ``torch.Generator`` with the same seed on both sides; diffusers' ``randn_tensor`` and our
  ``noise_like`` make the same draw, in the same order (one per stochastic step; diffusers' extra draw at
  its last step, multiplied by 0, comes after everything compared). As shipped, DPM-Solver's SDE draws
  float32 noise (a different stream from the float64 one), so there both sides get a pre-drawn list:
  diffusers through ``variance_noise``, ours by patching ``noise_like``.
* The last step: our samplers return x0_hat when the last level is 0. Diffusers does too with DDIM's
  ``set_alpha_to_one=True``, DPM-Solver's ``final_sigmas_type="zero"`` and the Euler family's final
  sigma 0 (its Euler step into sigma = 0 is x0_hat up to rounding); DDPM does when its last timestep is 0.

Differences by design, each measured in a test below: DDPM's last step with a last timestep > 0 adds
noise; DDIM with ``set_alpha_to_one=False`` and DPM-Solver with ``final_sigmas_type="sigma_min"`` stop at
the first level x_{1/N} instead of x0_hat; fractional timesteps (Karras sigmas, Euler's linspace) map to
other noise levels than our piecewise-linear alpha_bar; DPM-Solver++ 3M weights the quadratic term by
half (test_samplers_peer_dpm3m.py); our ``lower_order_final`` acts at every step count and on the step
into the process's smallest level, diffusers' below 15 steps only (so on a 20-step Karras ladder, and with
diffusers' ``lower_order_final=False``, ours is switched off to compare). Shared set-up: helpers_peer.py. UniPC (``UniPCMultistepScheduler``) has no undiffuse counterpart: not checked.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

pytest.importorskip("diffusers")
# diffusers' np.array(tensor) under numpy 2 warns; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)
from diffusers.utils.torch_utils import randn_tensor  # noqa: E402

import undiffuse.samplers.dpm_solver as dpm_solver_module  # noqa: E402
from undiffuse.samplers import (  # noqa: E402
    ddim, ddpm, dpmpp_2m, dpmpp_2m_sde, euler, euler_ancestral, heun, noise_like, timesteps,
)
from undiffuse.samplers.base import scaled  # noqa: E402
from undiffuse.testing import OracleDenoiser  # noqa: E402

from helpers_peer import (  # noqa: E402
    B, F64, GMM, N, PROCESSES, Recorder, assert_same_calls, float64_diffusers, gen, levels_of, make, max_gap,
    precision, run_diffusers,
)


# --------------------------------------------------------------------------------------------
# Tables, spacings, noise
# --------------------------------------------------------------------------------------------

def test_schedules_are_diffusers_betas():
    """beta_schedule "linear" (1e-4..0.02) is our DDPM "linear" and "squaredcos_cap_v2" our "cosine".
    In float64 the linear betas and alphas_cumprod are bit-identical and the cosine ones agree to
    2.3e-16 (betas, abs) and 1.5e-15 (alpha_bar, rel); as shipped, diffusers' float32 tables are ours
    rounded: linear betas 1.4e-9 abs, alpha_bar 3.6e-7 rel; cosine 2.2e-8 and 1.3e-5 (at alpha_bar ~ 4e-8)."""
    for schedule, (beta_abs, ab_rel) in {"linear": (2e-9, 1e-6), "cosine": (5e-8, 5e-5)}.items():
        p = PROCESSES[schedule]
        with float64_diffusers(DDPMScheduler):
            wide = make(DDPMScheduler, schedule)
        shipped = make(DDPMScheduler, schedule)
        assert wide.betas.dtype == F64 and shipped.betas.dtype == torch.float32
        if schedule == "linear":
            assert torch.equal(wide.betas, p.betas) and torch.equal(wide.alphas_cumprod, p.alpha_bar[1:])
        else:
            torch.testing.assert_close(wide.betas, p.betas, rtol=0, atol=1e-15)
            torch.testing.assert_close(wide.alphas_cumprod, p.alpha_bar[1:], rtol=1e-14, atol=0)
        torch.testing.assert_close(shipped.betas.double(), p.betas, rtol=0, atol=beta_abs)
        torch.testing.assert_close(shipped.alphas_cumprod.double(), p.alpha_bar[1:], rtol=ab_rel, atol=0)


@pytest.mark.parametrize("cls", [DDPMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler],
                         ids=["ddpm", "euler", "dpm"])
def test_our_spacings_are_diffusers_spacings(cls):
    """Levels (n + 1) / N of diffusers' timesteps n equal ours exactly: "trailing" (any step count;
    DPM-Solver's trailing too), "linspace" for DDPM/DDIM/Euler/Heun (DPM-Solver's linspace is another
    rule: n + 1 points, the last dropped),
    and "leading" with steps_offset=0. Euler and Heun do not round linspace: for step counts with
    steps - 1 not dividing 999 their timesteps are fractional (``test_fractional_timesteps_...``)."""
    p = PROCESSES["linear"]
    spacings = {"trailing": [7, 10, 25, 33, 50, 1000]}
    if cls is not DPMSolverMultistepScheduler:
        # Euler/Heun keep linspace's fractional timesteps: integer only when steps - 1 divides 999
        linspace = [2, 4, 10, 28, 38, 1000] if cls is EulerDiscreteScheduler else [2, 10, 28, 50, 1000]
        spacings.update(linspace=linspace, leading=[7, 10, 33, 50, 1000])
    for spacing, counts in spacings.items():
        sched = make(cls, timestep_spacing=spacing, steps_offset=0)
        for steps in counts:
            sched.set_timesteps(steps)
            assert levels_of(sched) == timesteps(p, steps, spacing)[:-1].tolist(), (spacing, steps)


def test_leading_is_diffusers_leading_with_steps_offset_0():
    """Our "leading" is diffusers' "leading" with steps_offset=0 (981, 961, ..., 1 of 1000, 1-based, for
    50 steps: 0-based 980, ..., 0). Stable Diffusion's steps_offset=1 (0-based 981, ..., 1) is one level
    above it everywhere (timesteps.py's docstring says so)."""
    p = PROCESSES["linear"]
    for steps in (10, 50):
        ours = timesteps(p, steps, "leading")[:-1]
        for offset in (0, 1):
            sched = make(DDIMScheduler, timestep_spacing="leading", steps_offset=offset)
            sched.set_timesteps(steps)
            torch.testing.assert_close(torch.tensor(levels_of(sched), dtype=F64), ours + offset / N,
                                       rtol=0, atol=1e-15)


@pytest.mark.parametrize("steps", [7, 33, 50, 999])
def test_linspace_step_counts_match_diffusers(steps):
    """Odd counts hit exact .5 ties, rounded half to even by both (an earlier rounding of
    N - (N-1) i / (steps-1) picked neighbouring steps there)."""
    sched = make(DDPMScheduler, timestep_spacing="linspace")
    sched.set_timesteps(steps)
    assert levels_of(sched) == timesteps(PROCESSES["linear"], steps, "linspace")[:-1].tolist()


def test_randn_tensor_draws_what_noise_like_draws():
    """With a CPU generator, diffusers' ``randn_tensor`` (float64) and our ``noise_like`` give
    bit-identical draws in the same order; a float32 draw from the same seed is another stream once a
    tensor has 16 or more elements (why as-shipped DPM-Solver SDE gets pre-drawn noise below)."""
    for shape in [(B, 2), (3, 4, 5)]:
        g1, g2 = gen(9), gen(9)
        x = torch.zeros(shape, dtype=F64)
        for _ in range(3):
            assert torch.equal(randn_tensor(shape, generator=g1, device=torch.device("cpu"), dtype=F64),
                               noise_like(x, g2))
    z32 = randn_tensor((B, 2), generator=gen(9), device=torch.device("cpu"), dtype=torch.float32)
    assert float((z32.double() - noise_like(torch.zeros(B, 2, dtype=F64), gen(9))).abs().max()) > 0.1


# --------------------------------------------------------------------------------------------
# The same algorithm: trajectories agree
# --------------------------------------------------------------------------------------------

class Case(NamedTuple):
    id: str
    cls: type
    config: dict
    steps: int
    spacing: str            # our spacing that reproduces diffusers' timesteps
    sampler: object
    options: dict
    stochastic: bool
    step_kw: dict
    tol_f64: float          # max abs difference allowed in float64 (measured in the comment)
    tol_f32: float          # ... as shipped


DDPM_CFG = dict(clip_sample=False)
CASES = [
    # Measured max |difference| over all model inputs (final samples: no larger), float64 / as shipped,
    # in the comments; the tolerances leave a margin of 5 to 10.
    Case("ddpm-fixed_small-linspace50", DDPMScheduler, dict(DDPM_CFG, timestep_spacing="linspace"), 50,
         "linspace", ddpm, {"variance": "beta_tilde"}, True, {}, 1e-13, 1e-4),        # 1.2e-14 / 1.2e-5
    Case("ddpm-fixed_large-linspace50", DDPMScheduler,
         dict(DDPM_CFG, timestep_spacing="linspace", variance_type="fixed_large"), 50,
         "linspace", ddpm, {"variance": "beta"}, True, {}, 1e-13, 1e-4),              # 1.2e-14 / 1.2e-5
    Case("ddpm-fixed_small-all1000", DDPMScheduler, dict(DDPM_CFG, timestep_spacing="trailing"), 1000,
         "trailing", ddpm, {}, True, {}, 5e-12, 1e-3),                                # 8.8e-13 / 1.6e-4
    Case("ddim-eta0-trailing50", DDIMScheduler, dict(DDPM_CFG, timestep_spacing="trailing"), 50,
         "trailing", ddim, {}, False, {}, 3e-14, 5e-6),                               # 3.1e-15 / 6.6e-7
    Case("ddim-eta1-trailing50", DDIMScheduler, dict(DDPM_CFG, timestep_spacing="trailing"), 50,
         "trailing", ddim, {"eta": 1.0}, True, {"eta": 1.0}, 3e-14, 1e-5),            # 2.9e-15 / 1.2e-6
    Case("ddim-eta0-leading50", DDIMScheduler, dict(DDPM_CFG, timestep_spacing="leading"), 50,
         "leading", ddim, {}, False, {}, 3e-14, 5e-6),                                # 2.7e-15 / 8.1e-7
    Case("ddim-eta0-cosine-trailing50", DDIMScheduler,
         dict(DDPM_CFG, timestep_spacing="trailing", schedule="cosine"), 50,
         "trailing", ddim, {}, False, {}, 1e-12, 1e-5),                               # 7.7e-14 / 1.8e-6
    Case("euler-trailing50", EulerDiscreteScheduler, dict(timestep_spacing="trailing"), 50,
         "trailing", euler, {}, False, {}, 3e-14, 5e-6),                              # 2.2e-15 / 6.0e-7
    Case("euler-linspace28", EulerDiscreteScheduler, dict(timestep_spacing="linspace"), 28,
         "linspace", euler, {}, False, {}, 3e-14, 1e-5),                              # 2.2e-15 / 1.1e-6
    Case("heun-trailing25", HeunDiscreteScheduler, dict(timestep_spacing="trailing"), 25,
         "trailing", heun, {}, False, {}, 3e-14, 5e-6),                               # 2.2e-15 / 8.0e-7
    Case("euler_ancestral-trailing50", EulerAncestralDiscreteScheduler, dict(timestep_spacing="trailing"), 50,
         "trailing", euler_ancestral, {}, True, {}, 3e-14, 1e-5),                     # 1.9e-15 / 1.4e-6
    Case("dpmpp_2m-trailing20", DPMSolverMultistepScheduler, dict(timestep_spacing="trailing"), 20,
         "trailing", dpmpp_2m, {}, False, {}, 3e-14, 5e-6),                           # 2.2e-15 / 5.6e-7
    Case("dpmpp_2m-trailing10-lower_order_final", DPMSolverMultistepScheduler,
         dict(timestep_spacing="trailing", lower_order_final=True), 10,
         "trailing", dpmpp_2m, {}, False, {}, 3e-14, 1e-5),                           # 1.8e-15 / 1.3e-6
    Case("dpmpp_2m-cosine-trailing20", DPMSolverMultistepScheduler,
         dict(timestep_spacing="trailing", schedule="cosine"), 20,
         "trailing", dpmpp_2m, {}, False, {}, 1e-12, 1e-3),                           # 1.8e-13 / 2.1e-4
    Case("dpmpp_2m_sde-trailing20", DPMSolverMultistepScheduler,
         dict(timestep_spacing="trailing", algorithm_type="sde-dpmsolver++"), 20,
         "trailing", dpmpp_2m_sde, {}, True, {}, 3e-14, 1e-5),                        # 4.4e-15 / 8.1e-7
]


def _run_case(case: Case, wide: bool, monkeypatch=None):
    config = dict(case.config)
    schedule = config.pop("schedule", "linear")
    p = PROCESSES[schedule]
    shipped_sde = not wide and case.cls is DPMSolverMultistepScheduler and case.stochastic
    noises = ([torch.randn(B, 2, generator=gen(100 + i)).to(F64) for i in range(case.steps)]
              if shipped_sde else None)  # float32 values, exact in both dtypes
    with precision(case.cls, wide):
        sched = make(case.cls, schedule, **config)
        sched.set_timesteps(case.steps)
        latents = torch.randn(B, 2, generator=gen(0), dtype=F64) * sched.init_noise_sigma
        out_d, calls_d = run_diffusers(sched, OracleDenoiser(GMM, p), latents, noises=noises,
                                       generator=gen(1) if case.stochastic and not noises else None,
                                       **case.step_kw)
    ts = timesteps(p, case.steps, case.spacing)
    assert sorted(set(levels_of(sched)), reverse=True) == ts[:-1].tolist()  # Heun repeats its levels
    if noises is not None:
        draws = iter(noises)
        monkeypatch.setattr(dpm_solver_module, "noise_like", lambda x, g: next(draws))
    ours = Recorder(OracleDenoiser(GMM, p))
    # ours starts from the state diffusers hands its model first (latents / sqrt(sigma_max^2 + 1) for
    # the Euler family, the latents themselves otherwise)
    out_o = case.sampler(ours, calls_d[0][1], ts, generator=gen(1) if case.stochastic else None, **case.options)
    return out_d, calls_d, out_o, ours.calls


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_agrees_in_float64(case):
    """Every model call (level exactly, input x_t) and the final sample agree with diffusers run in
    float64, to ``case.tol_f64`` absolute: measured 2e-15 to 1.2e-14 (states of size ~3), 8.8e-13 over
    1000 DDPM steps, 8e-14 and 1.8e-13 with the cosine schedule (its first level has sigma/alpha = 2e4)."""
    out_d, calls_d, out_o, calls_o = _run_case(case, wide=True)
    assert_same_calls(calls_d, calls_o, case.tol_f64)
    torch.testing.assert_close(out_d, out_o, rtol=0, atol=case.tol_f64)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_agrees_as_shipped(case, monkeypatch):
    """The same against diffusers as installed (float32 tables and state casts): agreement to
    ``case.tol_f32`` absolute, measured 5.6e-7 to 1.4e-6 (DDIM, Euler, Heun, Euler-ancestral,
    DPM-Solver), 1.2e-5 for DDPM over 50 steps and 1.6e-4 over 1000 (its posterior coefficients come from
    float32 alphas_cumprod), 2.1e-4 for DPM-Solver with the cosine schedule. DPM-Solver SDE gets
    pre-drawn float32 noise (its generator path draws float32, another stream)."""
    out_d, calls_d, out_o, calls_o = _run_case(case, wide=False, monkeypatch=monkeypatch)
    assert_same_calls(calls_d, calls_o, case.tol_f32)
    torch.testing.assert_close(out_d, out_o, rtol=0, atol=case.tol_f32)


# --------------------------------------------------------------------------------------------
# Differences by design
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variance_type,variance", [("fixed_small", "beta_tilde"), ("fixed_large", "beta")])
def test_ddpm_last_step_from_a_positive_timestep_adds_noise(variance_type, variance):
    """With "trailing" spacing diffusers' DDPM ends at timestep 19 > 0 and still adds noise on the step
    to x0: sqrt(clamp(0, min=1e-20)) = 1e-10 times z for fixed_small, sqrt(1 - alpha_bar_20) = 0.0760
    times z for fixed_large (up to 0.134 here), z being the generator's next draw. Ours returns x0_hat.
    Every call agrees (2.7e-15) and the final difference is exactly that noise (to 1.2e-15)."""
    p = PROCESSES["linear"]
    with float64_diffusers(DDPMScheduler):
        sched = make(DDPMScheduler, clip_sample=False, timestep_spacing="trailing", variance_type=variance_type)
        sched.set_timesteps(50)
        x_T = torch.randn(B, 2, generator=gen(0), dtype=F64)
        out_d, calls_d = run_diffusers(sched, OracleDenoiser(GMM, p), x_T, generator=gen(1))
    ours, g = Recorder(OracleDenoiser(GMM, p)), gen(1)
    out_o = ddpm(ours, calls_d[0][1], timesteps(p, 50, "trailing"), generator=g, variance=variance)
    z_next = torch.randn(B, 2, generator=g, dtype=F64)
    std = 1e-10 if variance_type == "fixed_small" else math.sqrt(1 - float(p.alpha_bar[20]))
    assert_same_calls(calls_d, ours.calls, 1e-13)
    torch.testing.assert_close(out_d - out_o, std * z_next, rtol=0, atol=1e-13)
    assert float((out_d - out_o).abs().max()) > (0.05 if variance_type == "fixed_large" else 1e-11)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_without_alpha_to_one_stops_at_the_first_step(eta):
    """Stable Diffusion's DDIM (leading, steps_offset=1, set_alpha_to_one=False) steps last to
    alphas_cumprod[0], the level 1/N, and returns x_{1/N}, not x0_hat: it equals our state at 1/N
    when ours runs on its levels followed by 1/N and 0 (to 2e-15); our x0_hat is 4.5e-4 to 5.7e-4 away."""
    p = PROCESSES["linear"]
    with float64_diffusers(DDIMScheduler):
        sched = make(DDIMScheduler, clip_sample=False, timestep_spacing="leading", steps_offset=1,
                     set_alpha_to_one=False)
        sched.set_timesteps(50)
        x_T = torch.randn(B, 2, generator=gen(0), dtype=F64)
        out_d, calls_d = run_diffusers(sched, OracleDenoiser(GMM, p), x_T, generator=gen(1) if eta else None,
                                       eta=eta)
    ours = Recorder(OracleDenoiser(GMM, p))
    out_o = ddim(ours, calls_d[0][1], timesteps(p, 0, levels_of(sched) + [1 / N]), generator=gen(1), eta=eta)
    assert_same_calls(calls_d, ours.calls[:-1], 1e-13)
    assert ours.calls[-1][0] == 1 / N
    torch.testing.assert_close(out_d, ours.calls[-1][1], rtol=0, atol=1e-13)
    assert float((out_d - out_o).abs().max()) > 1e-4


def test_dpm_final_sigma_min_stops_at_the_first_step():
    """DPM-Solver++(2M) with final_sigmas_type="sigma_min" takes its last (second-order) step to the
    sigma of timestep 0 and returns x_{1/N}; it equals our dpmpp_2m state at 1/N on its levels followed
    by 1/N and 0 (to 1.8e-15), 7.4e-4 from our x0_hat. Both with lower_order_final=False: ours would
    take that last step, into the process's smallest level, at first order (``step_orders``)."""
    p = PROCESSES["linear"]
    with float64_diffusers(DPMSolverMultistepScheduler):
        sched = make(DPMSolverMultistepScheduler, final_sigmas_type="sigma_min", lower_order_final=False,
                     timestep_spacing="trailing")
        sched.set_timesteps(20)
        x_T = torch.randn(B, 2, generator=gen(0), dtype=F64)
        out_d, calls_d = run_diffusers(sched, OracleDenoiser(GMM, p), x_T)
    ours = Recorder(OracleDenoiser(GMM, p))
    out_o = dpmpp_2m(ours, calls_d[0][1], timesteps(p, 0, levels_of(sched) + [1 / N]), lower_order_final=False)
    assert_same_calls(calls_d, ours.calls[:-1], 1e-13)
    torch.testing.assert_close(out_d, ours.calls[-1][1], rtol=0, atol=1e-13)
    assert float((out_d - out_o).abs().max()) > 1e-4


FRACTIONAL = [
    # id, scheduler, config, steps, our ts ("karras" spacing or diffusers' levels), sampler, its options,
    # measured (max rel. sigma mismatch, max |diff| of model inputs). diffusers' lower_order_final acts
    # below 15 steps only: ours is switched off to match it at 20.
    ("euler-karras30", EulerDiscreteScheduler, dict(use_karras_sigmas=True), 30, "karras", euler, {},
     (6.5e-3, 1.7e-5)),
    ("euler-linspace50", EulerDiscreteScheduler, dict(timestep_spacing="linspace"), 50, None, euler, {},
     (1.8e-4, 1.6e-5)),
    ("dpmpp_2m-karras20", DPMSolverMultistepScheduler, dict(use_karras_sigmas=True), 20, "karras", dpmpp_2m,
     {"lower_order_final": False}, (4.5e-2, 2.9e-3)),
]


@pytest.mark.parametrize("case", FRACTIONAL, ids=[c[0] for c in FRACTIONAL])
def test_fractional_timesteps_are_other_noise_levels(case):
    """Where diffusers' timesteps fall between the trained ones, the two libraries disagree on the
    noise level there: diffusers maps sigma to a timestep by interpolating log sigma linearly (Karras),
    or sigma linearly (Euler's fractional linspace), between integer timesteps, while our DDPM interpolates
    alpha_bar linearly in t; DPM-Solver with Karras sigmas even rounds the model's timestep to an integer
    (beta schedules other than squaredcos_cap_v2) while its update uses the exact Karras sigma.

    Both solvers use the same sigma ladder (our "karras" spacing reproduces diffusers' Karras sigmas to
    1e-13, relative), and a model asked at the scheduler's own sigma gives the same trajectory as ours (to
    1e-13; done for Euler-Karras). A model asked at the timestep (oracle at (n + 1) / N) sees a sigma off
    by up to 0.65% (Euler-Karras, at the smallest sigma), 0.018% (Euler linspace), 4.5% (DPM-Karras),
    and the trajectories differ by 1.7e-5, 1.6e-5, 2.9e-3 (the measured bounds asserted, x2 margin).
    """
    _, cls, config, steps, spacing, sampler, options, (sigma_gap, x_gap) = case
    p = PROCESSES["linear"]
    latents = torch.randn(B, 2, generator=gen(0), dtype=F64)
    modes = ["timestep", "sigma"] if cls is EulerDiscreteScheduler and spacing == "karras" else ["timestep"]
    for mode in modes:
        with float64_diffusers(cls):
            sched = make(cls, **config)
            sched.set_timesteps(steps)
            out_d, calls_d = run_diffusers(sched, OracleDenoiser(GMM, p), latents * sched.init_noise_sigma,
                                           level=mode)
        sigmas = sched.sigmas[:-1]
        ts = timesteps(p, steps, spacing, sigma_max=None) if spacing else timesteps(p, 0, levels_of(sched))
        if spacing:
            torch.testing.assert_close(scaled(p, ts[:-1])[1], sigmas, rtol=1e-12, atol=0)
        ours = Recorder(OracleDenoiser(GMM, p))
        out_o = sampler(ours, calls_d[0][1], ts, **options)
        d_x = max_gap(calls_d, ours.calls)[1]
        if mode == "sigma":
            assert d_x < 1e-13
            torch.testing.assert_close(out_d, out_o, rtol=0, atol=1e-13)
            continue
        ours_sigma_at_timestep = scaled(p, torch.tensor(levels_of(sched), dtype=F64))[1]
        mismatch = float(((ours_sigma_at_timestep - sigmas) / sigmas).abs().max())
        assert sigma_gap / 2 < mismatch < sigma_gap * 2, mismatch
        assert x_gap / 2 < d_x < x_gap * 2, d_x

