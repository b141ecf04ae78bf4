"""Tests for multi-process training (undiffuse.distributed, DDP in undiffuse.train).

Launches the user-facing path, ``python -m torch.distributed.run --standalone --nproc_per_node 2
-m undiffuse train ...`` (torchrun: gloo on the CPU), on the tiny U-Net and 8x8 digits, and shows
that the result does not depend on the number of processes:

* 2 processes after 3 steps equal 1 process with the same global batch (model, EMA, AdamW
  moments; the batch generator's state bitwise);
* a 2-process checkpoint loads with ``undiffuse.load`` and resumes in 1 process, and a 1-process
  checkpoint resumes in 2, both ending where an uninterrupted 1-process run ends;
* a batch size that does not split over the processes is a clear error;
* ``torchrun ... -m undiffuse eval`` shares the sampling out and measures exactly what one
  process measures.

"Equal" is to float tolerance, not bitwise: DDP averages gradients by an all-reduce, which sums
in another order than one process's batch mean. Most weights agree to about 1e-7; but a weight
whose gradient is zero in exact arithmetic (some conv biases here) gets a gradient of rounding
noise (~1e-10) that AdamW normalises into steps of size ~lr, so such elements differ by ~1e-4 for
any change of summation order (another BLAS would do the same). They do not change what the
network computes, so the tests compare (see ``compare``): the networks' predictions on a fixed
batch (measured: relative differences 5e-8 to 3e-7), the weights and AdamW moments as whole
vectors (measured: 5e-6 to 2e-5, and 1e-7 to 8e-7), and the batch generator's state, bitwise.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import undiffuse
from undiffuse import distributed
from undiffuse.checkpoint import latest_checkpoint, load_weights
from undiffuse.config import TrainConfig
from undiffuse.trainer import Trainer

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

# Constant lr: a checkpoint at step 3 of a 6-step run then equals a 3-step run. Label dropout
# draws from the shared generator every step; the tiny U-Net has no network dropout.
ARGS = ["train", "--preset", "digits", "--net", "tiny", "--batch-size", "8", "--lr", "2e-3",
        "--lr-schedule", "constant", "--warmup-steps", "2", "--label-dropout", "0.3", "--no-bf16",
        "--device", "cpu", "--log-every", "1", "--checkpoint-every", "3", "--sample-every", "0",
        "--num-samples", "4", "--sample-steps", "2"]
#: Largest allowed ||a - b|| / ||a|| between runs with different process counts: of the
#: predictions, and of the weights and AdamW moments as whole vectors.
PRED_REL, STATE_REL = 1e-5, 1e-4


def launch(nproc: int, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`undiffuse` in ``nproc`` processes under torchrun (a free port each time), or plainly."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run([*launcher, "-m", "undiffuse", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def train(nproc: int, out: Path, *extra: str) -> subprocess.CompletedProcess:
    result = launch(nproc, *ARGS, "--out", out.name, *extra, cwd=out.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def checkpoint(run: Path, step: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    folder = latest_checkpoint(run) if step is None else run / "checkpoints" / f"step-{step:08d}"
    return {name: load_weights(folder / f"{name}.safetensors")
            for name in ("model", "ema", "optimizer", "rng")}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / a.norm().clamp_min(1e-30))


def flat(state: dict[str, torch.Tensor], suffix: str = "") -> torch.Tensor:
    return torch.cat([v.double().flatten() for k, v in sorted(state.items()) if k.endswith(suffix)])


def compare(run_a: Path, a: dict, b: dict) -> dict[str, float]:
    """Assert two checkpoints hold the same training state to float tolerance (see the module
    docstring); returns the measured relative differences."""
    measured = {}
    denoiser = undiffuse.load(run_a).denoiser  # the run's architecture; weights replaced below
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 8, 8, generator=g)
    t = 0.01 + 0.98 * torch.rand(16, generator=g, dtype=torch.float64)
    labels = torch.arange(16) % 11  # 10 is the null class
    for name in ("model", "ema"):
        assert a[name].keys() == b[name].keys(), name
        preds = []
        for state in (a[name], b[name]):
            denoiser.load_state_dict(state)
            with torch.no_grad():
                preds.append(denoiser(x, t, labels).x0)
        measured[f"{name} predictions"] = rel(*preds)
        measured[f"{name} weights"] = rel(flat(a[name]), flat(b[name]))
    for moment in ("exp_avg", "exp_avg_sq"):
        measured[moment] = rel(flat(a["optimizer"], moment), flat(b["optimizer"], moment))
    assert torch.equal(a["optimizer"]["0.step"], b["optimizer"]["0.step"])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])
    for what, value in measured.items():
        assert value <= (PRED_REL if "predictions" in what else STATE_REL), (what, value)
    print({k: f"{v:.1e}" for k, v in measured.items()})
    return measured


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One process, 6 steps, checkpoints at 3 and 6: the reference."""
    root = tmp_path_factory.mktemp("ddp")
    train(1, root / "one", "--max-train-steps", "6")
    return root


def test_two_processes_equal_one_and_resume_in_one(runs):
    two = runs / "two"
    result = train(2, two, "--max-train-steps", "3")
    assert "DDP: 2 processes (gloo, cpu), 4 images per process, global batch 8" in result.stdout
    assert result.stdout.count("trained 3 steps") == 1  # rank 0 alone reports
    # Rank 0 alone writes: one log record per step.
    steps = [line.split(",")[0] for line in (two / "log.jsonl").read_text().splitlines()]
    assert steps == ['{"step": 1', '{"step": 2', '{"step": 3']
    compare(runs / "one", checkpoint(runs / "one", 3), checkpoint(two))

    # The checkpoint holds the plain module's weights and loads in a single process.
    pipe = undiffuse.load(two)
    assert not any(k.startswith("module.") for k in pipe.denoiser.state_dict())
    assert torch.isfinite(pipe.sample(2, num_inference_steps=2, class_labels=[0, 1])).all()

    # 2 -> 1: three more steps in one process end where the uninterrupted run ends.
    result = train(1, two, "--max-train-steps", "6", "--resume")
    assert "resumed" in result.stdout and "at step 3" in result.stdout
    compare(runs / "one", checkpoint(runs / "one", 6), checkpoint(two))


def test_one_process_checkpoint_resumes_in_two(runs):
    # The reference run's directory as it was at step 3.
    run = runs / "one-at-3"
    shutil.copytree(runs / "one", run)
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    (run / "checkpoints" / "latest").write_text("step-00000003\n")
    train(2, run, "--max-train-steps", "6", "--resume")
    compare(runs / "one", checkpoint(runs / "one", 6), checkpoint(run))


def test_batch_size_must_split_over_the_processes(tmp_path):
    result = launch(2, *ARGS, "--max-train-steps", "1", "--batch-size", "7", "--out", "run", cwd=tmp_path)
    assert result.returncode != 0
    assert "error: batch_size 7 does not split over 2 processes" in result.stderr
    assert "--batch-size 8" in result.stderr  # the fix
    assert not (tmp_path / "run").exists()


def test_single_process_helpers_need_no_process_group(monkeypatch):
    # Outside torchrun nothing is initialised and the helpers answer as for one process.
    for var in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(var, raising=False)
    with distributed.process_group("cpu"):
        assert not distributed.is_distributed()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        assert distributed.shard(8) == slice(0, 8)
        assert distributed.shard_batches(7, 3) == [(0, 3), (3, 3), (6, 1)]
        x = torch.arange(3.0)
        assert distributed.all_gather_cat(x) is x and distributed.all_reduce_mean(x) is x
        assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        distributed.resolve_device("tpu")
    with pytest.raises(ValueError, match="device must be one of"):
        Trainer(TrainConfig(data="digits", net="tiny", device="gpu"))


EVAL = ["eval", "--num-samples", "20", "--batch-size", "6", "--steps", "2", "--nll-images", "4", "--nll-steps", "2",
        "--device", "cpu"]


def test_evaluation_sharded_over_two_processes_equals_one(runs):
    # 20 samples in batches of 6: rank 0 draws batches 0 and 6, rank 1 batches 12 and 18 (2 images).
    measured = {}
    for nproc in (1, 2):
        run = runs / f"eval-{nproc}"
        shutil.copytree(runs / "one", run)
        result = launch(nproc, *EVAL, "--run-dir", run.name, cwd=runs)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count("written:") == 1  # rank 0 alone reports
        measured[nproc] = json.loads((run / "eval.json").read_text())
    one, two = measured[1], measured[2]
    assert (one["processes"], two["processes"]) == (1, 2)
    for key in ("sampling_images_per_s", "processes", "run", "plots"):
        one.pop(key), two.pop(key)
    # Bitwise, as promised (evaluate.py): sharding deals out whole batches, so each batch is the same
    # call (same size, same seed, one thread) in either run, and rank 0 computes every metric from the
    # same gathered samples. Nothing is computed at another shape or batch composition.
    assert one == two  # every sample, hence every metric, identical
    assert one["fid"] > 0 and one["classes"]


GATHER = """
import sys
from pathlib import Path

import torch
from undiffuse import distributed
with distributed.process_group("cpu"):
    r = distributed.rank()
    x = torch.full((r + 1, 2), float(r))  # uneven shards: 1 row on rank 0, 2 on rank 1
    got = distributed.all_gather_cat(x)
    assert torch.equal(got, torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])), got
    assert distributed.all_reduce_mean(torch.tensor(float(r))).item() == 0.5
    assert distributed.any_rank(r == 1) and not distributed.any_rank(False)
    assert distributed.shard(8) == slice(4 * r, 4 * r + 4)
    # 5 batches of 3 (the last 1 image) dealt out contiguously: 3 to rank 0, 2 to rank 1.
    expected = [[(0, 3), (3, 3), (6, 3)], [(9, 3), (12, 1)]][r]
    assert distributed.shard_batches(13, 3) == expected, distributed.shard_batches(13, 3)
    assert distributed.shard_batches(3, 3) == [[(0, 3)], []][r]  # fewer batches than ranks
    (Path(sys.argv[1]) / f"ok-{r}-{distributed.backend()}").touch()  # no interleaved prints
"""


def test_collectives_in_two_processes(tmp_path):
    script = tmp_path / "gather.py"
    script.write_text(GATHER)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", "2", str(script), str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "ok-0-gloo").exists() and (tmp_path / "ok-1-gloo").exists()
