"""`undiffuse eval` end to end on a tiny digits run: every metric present, finite, beside its floor.

The feature network for sklearn's digits trains in seconds; it is cached under a temporary
UNDIFFUSE_CACHE so the test never touches the user's cache.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from undiffuse.cli import main
from undiffuse.config import preset
from undiffuse.evaluate import format_table, sample_quality
from undiffuse.trainer import Trainer

from helpers_cli import assert_png


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    mp = pytest.MonkeyPatch()
    mp.setenv("UNDIFFUSE_CACHE", str(root / "cache"))
    cfg = preset("digits").updated(net="tiny", max_train_steps=30, batch_size=32, num_samples=10,
                                   sample_steps=2, out=str(root / "run"), bf16=False)
    Trainer(cfg).fit(progress=False)
    yield root / "run"
    mp.undo()


def test_eval_cli_writes_every_metric(digits_run, capsys):
    code = main(["eval", "--run", str(digits_run), "--n", "200", "--num-inference-steps", "5",
                 "--nll-images", "8", "--nll-steps", "10"])
    assert code == 0
    table = capsys.readouterr().out
    assert "| FID (feature net) |" in table and "bits/dim" in table
    result = json.loads((digits_run / "eval.json").read_text())
    for key in ("fid", "fid_floor", "kid", "kid_floor", "precision", "recall", "density", "coverage",
                "class_accuracy", "bits_per_dim_vlb", "sampling_images_per_s"):
        assert math.isfinite(result[key]), key
    # A 30-step model is far from the data; the real-vs-real floor is near 0.
    assert result["fid"] > result["fid_floor"]
    assert 0 <= result["precision"] <= 1 and 0 <= result["recall"] <= 1
    assert result["bits_per_dim_vlb"] > 0
    plots = result["plots"]
    assert {"samples", "loss", "trajectory", "rate_distortion_0"} <= set(plots), plots
    for path in map(Path, plots.values()):
        assert path.parent == digits_run / "eval", path
        assert_png(path)


def test_real_samples_score_like_the_floor(digits_run):  # fixture: temporary feature-net cache
    """Real held-out digits scored as if generated must land near the floor, not far above it."""
    from undiffuse.data import load_dataset

    data = load_dataset("digits")
    _, held = data.split(0.5, seed=7)
    real = sample_quality(held.x[:300], held.labels[:300], "digits", n=300)
    noise = sample_quality(torch.rand(300, 1, 8, 8) * 2 - 1, None, "digits", n=300)
    assert real["fid"] < 3 * real["fid_floor"] + 1.0
    assert noise["fid"] > 10 * real["fid"]
    assert real["class_accuracy"] > 0.9
    assert real["precision"] > 0.5 and noise["precision"] < real["precision"]


def test_table_lists_floors():
    result = {"fid": 1.0, "fid_floor": 0.5, "kid": 0.01, "kid_stderr": 0.002, "kid_floor": 0.0, "precision": 0.9,
              "precision_floor": 0.95, "recall": 0.8, "recall_floor": 0.9, "density": 1.0,
              "density_floor": 1.0, "coverage": 0.9, "coverage_floor": 0.95,
              "classes": {"num_present": 10, "kl": 0.01}, "sampling_images_per_s": 100.0}
    table = format_table(result)
    assert "| FID (feature net) | 1 | 0.5 |" in table
    assert "| KID (± standard error) | 0.01 ± 0.002 | 0 |" in table


def test_standard_fid_without_torchmetrics_is_a_clear_error(monkeypatch):
    """The standard Inception FID is optional: without its package or weights it says what to install."""
    import builtins

    from undiffuse.metrics import UnavailableError, standard_fid

    real_import = builtins.__import__

    def no_torchmetrics(name, *args, **kwargs):
        if name.startswith("torchmetrics"):
            raise ImportError("No module named 'torchmetrics'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torchmetrics)
    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(UnavailableError, match="pip install torchmetrics torch-fidelity"):
        standard_fid(x, x)
