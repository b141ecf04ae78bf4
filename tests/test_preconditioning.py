"""Karras et al. 2022, Table 1: each preconditioner row against the table's formulas, written out
here independently, and the network time inputs (``noise_label``) of undiffuse's processes.

Table 1 ("Network and preconditioning"), with sd = sigma_data and M = 1000:
  VP:  c_skip = 1, c_out = -s, c_in = 1 / sqrt(s^2 + 1), c_noise = (M - 1) t(s),
       t(s) = (sqrt(beta_min^2 + 2 beta_d ln(s^2 + 1)) - beta_min) / beta_d, beta_d = 19.9, beta_min = 0.1;
  VE:  c_skip = 1, c_out = s, c_in = 1, c_noise = ln(s / 2);
  EDM: c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
       c_noise = ln(s) / 4.
"""
from __future__ import annotations

import math

import pytest
import torch

from undiffuse.preconditioning import EDMPrecond, VEPrecond, VPPrecond, label_row, noise_label
from undiffuse.processes import DDPM, EDM, VE, VP

F64 = torch.float64
S = torch.exp(torch.linspace(math.log(0.002), math.log(80.0), 41, dtype=F64))


def _close(got, want):
    torch.testing.assert_close(got, torch.as_tensor(want, dtype=F64).expand_as(got), rtol=1e-12, atol=1e-12)


def test_vp_row():
    beta_d, beta_min = 19.9, 0.1
    want_t = [(math.sqrt(beta_min**2 + 2 * beta_d * math.log(s * s + 1)) - beta_min) / beta_d
              for s in S.tolist()]
    pre = VPPrecond(VP("linear").t_from_sigma)   # undiffuse's VP "linear" is Song et al.'s VP SDE
    c_skip, c_out, c_in, c_noise = pre.coefficients(S)
    _close(c_skip, 1.0)
    _close(c_out, [-s for s in S.tolist()])
    _close(c_in, [1 / math.sqrt(s * s + 1) for s in S.tolist()])
    torch.testing.assert_close(c_noise, 999 * torch.tensor(want_t, dtype=F64), rtol=1e-9, atol=1e-9)


def test_ve_row():
    c_skip, c_out, c_in, c_noise = VEPrecond().coefficients(S)
    _close(c_skip, 1.0)
    _close(c_out, S.tolist())
    _close(c_in, 1.0)
    _close(c_noise, [math.log(s / 2) for s in S.tolist()])


@pytest.mark.parametrize("sd", [0.5, 1.0, 1.7])
def test_edm_row(sd):
    c_skip, c_out, c_in, c_noise = EDMPrecond(sd).coefficients(S)
    _close(c_skip, [sd**2 / (s * s + sd**2) for s in S.tolist()])
    _close(c_out, [s * sd / math.sqrt(s * s + sd**2) for s in S.tolist()])
    _close(c_in, [1 / math.sqrt(s * s + sd**2) for s in S.tolist()])
    _close(c_noise, [math.log(s) / 4 for s in S.tolist()])


def test_every_row_passes_the_data_through_at_zero_noise():
    """D(x~; s) = c_skip x~ + c_out F -> x~ as s -> 0: c_skip -> 1 and c_out -> 0 for every row."""
    tiny = torch.tensor([1e-9], dtype=F64)
    for pre in [VPPrecond(), VEPrecond(), EDMPrecond(0.5)]:
        assert float(pre.c_skip(tiny)) == pytest.approx(1.0, abs=1e-12)
        assert abs(float(pre.c_out(tiny))) < 1e-8


def test_noise_labels_of_the_processes_are_undiffuses_constants():
    """The time inputs saved runs were trained on: 1000 t (DDPM, VP), ln max(sigma, sigma_min) (VE),
    ln(sigma) / 4 (EDM, Table 1), in t's dtype; ``process.noise_label`` is the same function."""
    t = torch.tensor([0.0, 0.001, 0.3, 1.0], dtype=F64)
    ve, edm = VE(0.01, 50.0), EDM()
    cases = [(DDPM(), 1000 * t), (VP("cosine"), 1000 * t),
             (ve, torch.log((0.01 * 5000**t).where(t > 0, torch.zeros_like(t)).clamp_min(0.01))),
             (edm, torch.log(edm.sigma(t).clamp_min(1e-12)) / 4)]
    for process, want in cases:
        torch.testing.assert_close(noise_label(process, t), want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(process.noise_label(t), want, rtol=0, atol=0)
        assert noise_label(process, t.float()).dtype == torch.float32
    assert isinstance(label_row(edm), EDMPrecond) and isinstance(label_row(ve), VEPrecond)


def test_bad_preconditioner_inputs_are_named():
    with pytest.raises(ValueError, match="sigma_data > 0"):
        EDMPrecond(0.0)
    with pytest.raises(ValueError, match="needs t_of_s"):
        VPPrecond().c_noise(S)

    class Odd(VP):
        label_row = "iddpm"

    with pytest.raises(ValueError, match="label_row is 'iddpm'"):
        noise_label(Odd(), torch.tensor(0.5))
