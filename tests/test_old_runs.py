"""Runs saved by the code before the redesign (issue #17) load and sample as they did then.

``tests/fixtures/old_runs`` holds tiny runs (Gaussian v-prediction with class labels, EDM on VE,
cold blur with the restorer recipe and its prior, text with the fake encoder) written by commit
22af143, with the samples that code drew (``make_old_runs.py`` says how). On the CPU family that
recorded them every sample must be bit for bit the same; elsewhere the kernels round differently
(issue #15), so there the samples must agree to float32 rounding.

One exception, by design: the ODE solvers that the redesign rewrote in Karras et al.'s scaled
variables (``samplers/sigma.py``: Euler, Heun, DPM-Solver++) carry x~ = x_t / alpha between steps
where the old code carried x_t, so on processes with alpha != 1 (DDPM, VP) the last bit of a sample
may differ: measured at most 1.2e-7 (one or two float32 ulps) on these runs; bounded here by 1e-6.
On VE and EDM (alpha = 1) they stay bit for bit, as does everything else.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import undiffuse
from undiffuse.data import load_dataset

from fixtures.make_old_runs import RUNS, cpu_signature

OLD = Path(__file__).parent / "fixtures" / "old_runs"
#: (run, sampler) pairs rewritten in sigma space on an alpha != 1 process (module docstring).
REWRITTEN = {("gaussian", "dpmpp_2m"), ("gaussian", "heun")}


def expected(run: Path) -> tuple[dict[str, torch.Tensor], str]:
    with safe_open(str(run / "expected.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()["cpu"]


def assert_same(new: torch.Tensor, old: torch.Tensor, recorded_on: str, what: str, rounding: bool = False) -> None:
    if rounding:
        torch.testing.assert_close(new, old, rtol=0, atol=1e-6 if recorded_on == cpu_signature() else 1e-4,
                                   msg=what)
    elif recorded_on == cpu_signature():
        assert torch.equal(new, old), f"{what}: differs from the old code's samples (max |diff| " \
                                      f"{(new - old).abs().max():.3g}) on the CPU family that recorded them"
    else:
        torch.testing.assert_close(new, old, rtol=0, atol=1e-4, msg=f"{what} (recorded on {recorded_on})")


@pytest.mark.parametrize("name", list(RUNS))
def test_an_old_run_loads_and_samples_as_before(name, tmp_path):
    run = shutil.copytree(OLD / name, tmp_path / name)  # loading must not need to write, but never risk the fixture
    want, recorded_on = expected(run)
    pipe = undiffuse.load(run)
    for key, kw in RUNS[name][1].items():
        assert_same(pipe.sample(4, **kw), want[key], recorded_on, f"{name}/{key}", (name, key) in REWRITTEN)
    if name == "cold":
        x_t = pipe.degrade(load_dataset("digits", n=4, seed=1).x)
        assert_same(pipe.restore(x_t, sampler="direct"), want["restore_direct"], recorded_on, "restore direct")
        assert_same(pipe.restore(x_t, t=3, sampler="improved"), want["restore_improved"], recorded_on,
                    "restore improved")
