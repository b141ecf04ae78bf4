"""Tests for the training loop's checkpoints (undiffuse.train, undiffuse.checkpoint).

Covers: checkpoints round-trip through ``undiffuse.load``; a stopped and resumed run ends bitwise
equal to an uninterrupted one; a crash while saving never damages the previous checkpoint; a
non-finite loss stops training with the last good checkpoint kept.

Everything runs on the 2-level 16-channel "tiny" U-Net on 8x8 digits with one intra-op thread: on
2 shared cores extra threads only add contention.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import struct
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import undiffuse
from undiffuse import checkpoint as checkpoint_module
from undiffuse.checkpoint import KEEP_CHECKPOINTS, latest_checkpoint, load_weights
from undiffuse.config import TrainConfig
from undiffuse.data import TensorData, load_dataset
from undiffuse.nets import UNET_PRESETS, build_net
from undiffuse.trainer import NonFiniteLossError, Trainer

from helpers_resume import straight_and_resumed


def digits(n: int = 128) -> TensorData:
    """A stratified subset of the 8x8 digits: the cheapest labelled image data."""
    return load_dataset("digits", n=n, seed=0)


def image_cfg(out: Path, **changes) -> TrainConfig:
    """A class-conditional tiny U-Net run on 8x8 digits: a few steps take a fraction of a second."""
    cfg = TrainConfig(data="digits", net="tiny", max_train_steps=8, batch_size=8, lr=2e-3, warmup_steps=2,
                      out=str(out), log_every=1, checkpoint_every=2, sample_every=0, num_samples=4,
                      sample_steps=2)
    return cfg.updated(**changes)


def files_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- 1. checkpoints round-trip -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """An 8-step class-conditional digits run, checkpointed every 2 steps: (trainer, data)."""
    out = tmp_path_factory.mktemp("run")
    data = digits()
    trainer = Trainer(image_cfg(out), data=data)
    trainer.fit(progress=False)
    return trainer, data


def _safetensors_header(path: Path) -> dict:
    """Parse the safetensors layout by hand: an 8-byte little-endian header size, then JSON."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    assert 8 + size <= len(raw)
    return json.loads(raw[8:8 + size])


def test_load_gives_the_trainers_ema_samples(trained_run):
    trainer, _ = trained_run
    pipe = undiffuse.load(trainer.run_dir)
    assert pipe.shape == (1, 8, 8) and pipe.num_classes == 10 and pipe.class_names == list("0123456789")
    labels = [0, 3, 7, 10, 9, 1]  # 10 is the null class
    for sampler in ("ddim", "ddpm"):
        direct = trainer.pipeline().sample(6, sampler=sampler, num_inference_steps=5, seed=11, class_labels=labels)
        loaded = pipe.sample(6, sampler=sampler, num_inference_steps=5, seed=11, class_labels=labels)
        assert torch.equal(direct, loaded), sampler
    assert_state_equal(pipe.denoiser.state_dict(), trainer.ema.state_dict())
    model = undiffuse.load(trainer.run_dir, weights="model")
    assert_state_equal(model.denoiser.state_dict(), trainer.denoiser.state_dict())
    # The EMA really is an average: it lags the trained weights.
    assert not torch.equal(trainer.ema.net.conv_out.weight, trainer.denoiser.net.conv_out.weight)
    with pytest.raises(ValueError, match="'ema' or 'model'"):
        undiffuse.load(trainer.run_dir, weights="best")


def test_run_directory_is_json_and_safetensors_only(trained_run):
    trainer, _ = trained_run
    run = trainer.run_dir
    root = run / "checkpoints"
    # Checkpoints at steps 2, 4, 6, 8; only the newest KEEP_CHECKPOINTS remain, latest names step 8.
    kept = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert KEEP_CHECKPOINTS == 2 and kept == ["step-00000006", "step-00000008"]
    assert (root / "latest").read_text().strip() == "step-00000008"
    assert latest_checkpoint(run) == root / "step-00000008"
    assert not [p for p in run.rglob(".*")]  # no temporary files or folders left behind
    for ckpt in kept:
        files = sorted(p.name for p in (root / ckpt).iterdir())
        assert files == ["ema.safetensors", "model.safetensors", "optimizer.safetensors",
                         "rng.safetensors", "state.json"]
        for path in (root / ckpt).glob("*.safetensors"):
            raw = path.read_bytes()
            assert raw[:1] != b"\x80" and raw[:2] != b"PK"  # neither a pickle nor torch.save's zip
            header = _safetensors_header(path)
            assert header and all(k == "__metadata__" or {"dtype", "shape", "data_offsets"} <= v.keys()
                                  for k, v in header.items())
        state = json.loads((root / ckpt / "state.json").read_text())
        assert state["step"] == int(ckpt.split("-")[1]) and "optimizer" in state
    config = json.loads((run / "config.json").read_text())
    assert config["train"] == json.loads(json.dumps(asdict(trainer.cfg)))
    assert config["data"] == {"name": "digits", "shape": [1, 8, 8], "num_classes": 10,
                              "class_names": list("0123456789")}
    assert build_net(config["net"]).config == trainer.denoiser.net.config
    machine = config["machine"]  # which machine trained it (the issue asks runs to say)
    assert machine["cpu"] and machine["gpu"] is None and machine["processes"] == 1
    assert machine["torch"] == torch.__version__ and set(machine["cpu_features"]) <= {"avx512f", "avx512_bf16", "amx_bf16"}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in records)
    assert (run / "samples" / "final.png").stat().st_size > 0


def test_rng_and_optimizer_state_are_checkpointed(trained_run):
    trainer, _ = trained_run
    ckpt = latest_checkpoint(trainer.run_dir)
    rng = load_weights(ckpt / "rng.safetensors")
    assert torch.equal(rng["generator"], trainer.gen.get_state())
    opt = load_weights(ckpt / "optimizer.safetensors")
    n_params = len(list(trainer.denoiser.parameters()))
    assert {k.split(".", 1)[1] for k in opt} == {"step", "exp_avg", "exp_avg_sq"}
    assert len(opt) == 3 * n_params
    assert float(opt["0.step"]) == 8.0


# --- 2. resume equals an uninterrupted run -----------------------------------------------------------


def resume_cfg(out: Path, **changes) -> TrainConfig:
    # Dropout in the U-Net (torch's global RNG) and label dropout (the trainer's generator) make
    # every step depend on both RNG states; tuples in the net dict as in UNET_PRESETS (config.json
    # stores lists); cosine decay makes the lr depend on cfg.max_train_steps; grids every 2 steps check that
    # sampling mid-run leaves the RNG alone. bf16 off: exact float32 arithmetic on CPU.
    net = {"type": "unet", **UNET_PRESETS["tiny"], "attn_resolutions": (4,), "dropout": 0.1}
    return image_cfg(out, net=net, label_dropout=0.3, bf16=False, lr_schedule="cosine", max_train_steps=8,
                     checkpoint_every=4, sample_every=2).updated(**changes)


def test_resume_equals_an_uninterrupted_run_bitwise(tmp_path):
    straight, second = straight_and_resumed(resume_cfg, tmp_path, digits(64))  # checkpoints at 4 and 8
    assert second.step == straight.step == 8

    # Equal bitwise, not merely close: model, EMA, optimizer moments and step counts, both RNGs.
    assert_state_equal(second.denoiser.state_dict(), straight.denoiser.state_dict())
    assert_state_equal(second.ema.state_dict(), straight.ema.state_dict())
    opt_a, opt_b = second.opt.state_dict(), straight.opt.state_dict()
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for idx in opt_a["state"]:
        assert_state_equal(opt_a["state"][idx], opt_b["state"][idx])
    assert [g["lr"] for g in opt_a["param_groups"]] == [g["lr"] for g in opt_b["param_groups"]]
    assert torch.equal(second.gen.get_state(), straight.gen.get_state())
    # The checkpoints on disk agree too.
    for name in ("model", "ema", "optimizer", "rng"):
        assert_state_equal(load_weights(latest_checkpoint(second.run_dir) / f"{name}.safetensors"),
                           load_weights(latest_checkpoint(straight.run_dir) / f"{name}.safetensors"))
    # And so do the logged losses of the replayed steps (step 5 ran twice in the resumed run).
    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())}
    assert losses(second.run_dir) == losses(straight.run_dir)


def test_resume_refuses_changed_settings_and_allows_new_stopping_points(tmp_path):
    data = digits(64)
    cfg = resume_cfg(tmp_path, max_train_steps=4, sample_every=0)
    with pytest.warns(RuntimeWarning, match="nothing to resume"):
        assert not Trainer(cfg, data=data).resume()  # nothing to resume yet
    Trainer(cfg, data=data).fit(progress=False)
    with pytest.raises(ValueError, match=r"settings differ.*\(lr\)"):
        Trainer(cfg.updated(lr=5e-3), data=data).resume()
    with pytest.raises(ValueError, match=r"\(label_dropout, seed\)"):
        Trainer(cfg.updated(seed=1, label_dropout=0.2), data=data).resume()
    # When to stop and what to write may change: continue to 6 steps with other grids.
    longer = Trainer(cfg.updated(max_train_steps=6, sample_steps=3, log_every=2), data=data)
    assert longer.resume() and longer.step == 4
    longer.fit(progress=False)
    assert longer.step == 6 and latest_checkpoint(tmp_path).name == "step-00000006"


def test_resume_refuses_a_changed_network(tmp_path):
    # A preset that gains a parameter-free setting (as text-small gained cross_attn_positions) would
    # load the old weights without complaint: resume must compare the architecture too.
    data = digits(64)
    cfg = resume_cfg(tmp_path, max_train_steps=2, sample_every=0)
    Trainer(cfg, data=data).fit(progress=False)
    config = json.loads((tmp_path / "config.json").read_text())
    config["net"].pop("cross_attn_positions")  # an older config: the missing key means the default
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert Trainer(cfg.updated(max_train_steps=3), data=data).resume()
    config["net"]["dropout"] = 0.3  # no parameters either: the weights alone would not tell
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"network differs.*dropout: saved 0.3, now 0.1"):
        Trainer(cfg.updated(max_train_steps=3), data=data).resume()


# --- 3. atomic checkpoints --------------------------------------------------------------------------


@pytest.fixture
def resumed_copy(trained_run, tmp_path):
    """A copy of the trained run, resumed by a fresh Trainer (so tests may damage it)."""
    trainer, data = trained_run
    out = tmp_path / "copy"
    shutil.copytree(trainer.run_dir, out)
    copy = Trainer(trainer.cfg.updated(out=str(out)), data=data)
    assert copy.resume() and copy.step == 8
    return copy


@pytest.mark.parametrize("fail_at", ["second weights file", "latest pointer"])
def test_crash_while_saving_keeps_the_previous_checkpoint(resumed_copy, monkeypatch, fail_at):
    trainer = resumed_copy
    run, root = trainer.run_dir, trainer.run_dir / "checkpoints"
    before = files_digest(root / "step-00000008")
    expected = undiffuse.load(run).sample(4, num_inference_steps=3, seed=5, class_labels=[1, 2, 3, 4])
    trainer.train_step()

    if fail_at == "second weights file":
        real, calls = checkpoint_module.save_file, []

        def save_file(tensors, path, *args, **kwargs):
            calls.append(path)
            if len(calls) == 2:
                raise OSError("No space left on device")
            return real(tensors, path, *args, **kwargs)

        monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    else:
        real_write = checkpoint_module.atomic_write_text

        def atomic_write_text(path, text):
            if Path(path).name == "latest":
                raise OSError("No space left on device")
            return real_write(path, text)

        monkeypatch.setattr(checkpoint_module, "atomic_write_text", atomic_write_text)

    with pytest.raises(OSError, match="No space"):
        trainer.save()
    assert (root / "latest").read_text().strip() == "step-00000008"
    assert files_digest(root / "step-00000008") == before
    if fail_at == "second weights file":
        assert not (root / "step-00000009").exists()
    loaded = undiffuse.load(run).sample(4, num_inference_steps=3, seed=5, class_labels=[1, 2, 3, 4])
    assert torch.equal(loaded, expected)
    # Once the disk is fine again, saving works and moves the pointer.
    monkeypatch.undo()
    trainer.save()
    assert latest_checkpoint(run).name == "step-00000009"
    assert_state_equal(undiffuse.load(run).denoiser.state_dict(), trainer.ema.state_dict())


def test_corrupt_files_give_clear_errors(resumed_copy):
    run = resumed_copy.run_dir
    ckpt = latest_checkpoint(run)
    (ckpt / "ema.safetensors").write_bytes(b"\x00garbage, not a safetensors file" * 3)
    with pytest.raises(ValueError, match=r"ema\.safetensors.*corrupt"):
        undiffuse.load(run)
    model = ckpt / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated mid-write
    with pytest.raises(ValueError, match=r"model\.safetensors.*corrupt"):
        Trainer(resumed_copy.cfg, data=resumed_copy.data).resume()
    (ckpt / "rng.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"rng\.safetensors"):
        load_weights(ckpt / "rng.safetensors")
    (run / "checkpoints" / "latest").write_text("step-00000099\n")
    with pytest.warns(RuntimeWarning, match="step-00000099, which is missing.*newest complete checkpoint"):
        undiffuse.load(run)  # step 8 lost a file: step 6 is the newest complete one
    shutil.rmtree(run / "checkpoints" / "step-00000006")
    with pytest.raises(FileNotFoundError, match="step-00000099.*no other complete checkpoint"):
        undiffuse.load(run)
    (run / "config.json").write_text('{"train": ')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        undiffuse.load(run)


def test_fresh_run_into_an_old_run_directory_keeps_its_own_checkpoint(resumed_copy):
    # Regression: the old run's higher-numbered checkpoints used to win the "keep the newest two"
    # clean-up, deleting the checkpoint just written and leaving `latest` dangling. (fit now refuses
    # such a directory, test_run_safety.py; saving step by step reaches the clean-up all the same.)
    run = resumed_copy.run_dir
    fresh = Trainer(resumed_copy.cfg.updated(max_train_steps=2), data=resumed_copy.data)
    for _ in range(2):
        fresh.train_step()
    fresh.save()
    assert latest_checkpoint(run).name == "step-00000002"
    assert len([p for p in (run / "checkpoints").glob("step-*")]) == KEEP_CHECKPOINTS
    assert_state_equal(undiffuse.load(run).denoiser.state_dict(), fresh.ema.state_dict())


# --- 4. a non-finite loss stops training -------------------------------------------------------------


def test_nan_loss_raises_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    data = digits(64)
    data = TensorData(data.x.clone(), data.labels, data.num_classes, data.name, data.class_names)
    trainer = Trainer(image_cfg(tmp_path, max_train_steps=10, checkpoint_every=2), data=data)

    def poison_after_step_4(trainer, record):
        if record["step"] == 4:
            trainer.data.x[:] = float("nan")  # a NaN pixel reaches the loss at step 5

    with pytest.raises(NonFiniteLossError, match="loss became nan at step 5") as info:
        trainer.fit(progress=False, on_log=poison_after_step_4)
    message = str(info.value)
    assert str(tmp_path / "checkpoints") in message and "--lr" in message
    assert trainer.step == 4  # the bad step was not taken
    assert all(torch.isfinite(p).all() for p in trainer.denoiser.parameters())
    assert latest_checkpoint(tmp_path).name == "step-00000004"
    pipe = undiffuse.load(tmp_path)
    assert_state_equal(pipe.denoiser.state_dict(), trainer.ema.state_dict())
    assert torch.isfinite(pipe.sample(4, num_inference_steps=3, class_labels=[0, 1, 2, 3])).all()


def test_huge_learning_rate_is_caught_as_non_finite_loss(tmp_path):
    cfg = image_cfg(tmp_path, lr=1e30, warmup_steps=0, max_train_steps=20, checkpoint_every=100, bf16=False)
    trainer = Trainer(cfg, data=digits(64))
    with pytest.raises(NonFiniteLossError, match=r"loss became (nan|inf) at step \d+"):
        trainer.fit(progress=False)
    assert trainer.step < 20
