"""What diffusers interop refuses, each with an error naming the layer, setting, file or tensor, and
nothing written: runs that diffusers cannot express (export), folders that undiffuse cannot read or
express (import), and targets that hold something already."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from undiffuse.interop.diffusers_unet import InteropError, check_exportable
from undiffuse.interop.export import export_diffusers
from undiffuse.interop.import_ import import_diffusers
from undiffuse.interop.scheduler import scheduler_from_diffusers, scheduler_to_diffusers
from undiffuse.nets import build_net
from undiffuse.processes import DDPM, VP

from helpers_interop import (
    RUNS, checkpoint, copy_folder, edit_unet_tensors, listing, read_json, train_tiny, write_json,
)

OLD_RUNS = Path(__file__).parent / "fixtures" / "old_runs"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny class-conditional run, its export)."""
    root = tmp_path_factory.mktemp("refusals")
    run = train_tiny(root / "run", **RUNS["v-cosine-classes"])
    return run, export_diffusers(run, root / "diffusers")


def _refused_export(run: Path, tmp_path: Path, match: str) -> None:
    before = listing(tmp_path)
    with pytest.raises(InteropError, match=match):
        export_diffusers(run, tmp_path / "out")
    assert listing(tmp_path) == before  # nothing written, not even a temporary folder


def _refused_import(folder: Path, tmp_path: Path, match: str) -> None:
    before = listing(tmp_path)
    with pytest.raises(InteropError, match=match):
        import_diffusers(folder, tmp_path / "out")
    assert listing(tmp_path) == before


# --- export: runs diffusers cannot express ----------------------------------------------------------

@pytest.mark.parametrize("name, match", [
    ("edm", r"process 've': diffusers' DDPMScheduler and DDIMScheduler hold N discrete betas"),
    ("cold", r"process 'blur' is a cold degradation"),
    ("text", r"layer enc\.\d+\.cross_attn \(CrossAttentionBlock\) and text_cond .* no UNet2DConditionModel"),
    ("gaussian", r"layer enc\.2\.norm2 has GroupNorm group count 16 but enc\.0\.norm1 has 8: diffusers' UNet2DModel"),
])
def test_old_runs_that_do_not_map_are_refused(name, match, tmp_path):
    _refused_export(OLD_RUNS / name, tmp_path, match)


def _edited_run(run: Path, tmp_path: Path, edit) -> Path:
    copy = copy_folder(run, tmp_path / "edited")
    cfg = read_json(copy / "config.json")
    edit(cfg)
    write_json(copy / "config.json", cfg)
    return copy


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(process={"type": "vp", "schedule": "linear"}), r"process 'vp'"),
    (lambda c: c["denoiser"].update(prediction="edm"), r"prediction 'edm': the EDM preconditioning"),
    (lambda c: c["net"].update(resample_with_conv=False), r"resample_with_conv=False"),
    (lambda c: c["net"].update(channel_mult=[2, 4]), r"channel_mult\[0\]=2"),
    # heads: 1 of 8 channels at level 0, 4 of 6 in the 24-channel middle: one attention_head_dim cannot say both
    (lambda c: c["net"].update(channel_mult=[1, 3], attn_resolutions=[8], head_dim=6),
     r"layer mid\.0\.attn has attention head width 6 but enc\.0\.attn has 8"),
], ids=["vp", "edm-prediction", "resample-without-conv", "channel-mult", "heads"])
def test_settings_that_do_not_map_are_refused(made, tmp_path, edit, match):
    run = _edited_run(made[0], tmp_path, edit)
    _refused_export(run, tmp_path, match)


def test_learned_variance_and_mlp_are_refused():
    with pytest.raises(InteropError, match="learn_variance=true"):
        scheduler_to_diffusers(DDPM(), {"prediction": "eps", "learn_variance": True, "clip_x0": None}, "DDIMScheduler")
    with pytest.raises(InteropError, match="the run's net is MLPDenoiser"):
        check_exportable(build_net("mlp"))


def test_export_target_that_is_not_empty_is_refused(made, tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(InteropError, match="exists and is not empty"):
        export_diffusers(made[0], target)
    assert listing(tmp_path) == ["out", "out/keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_diffusers(made[0], empty) / "model_index.json").is_file()  # an empty folder is fine


def test_run_without_checkpoint_is_refused(made, tmp_path):
    run = copy_folder(made[0], tmp_path / "run")
    shutil.rmtree(run / "checkpoints")
    _refused_export(run, tmp_path, "has no checkpoint yet")


# --- import: folders undiffuse cannot read or express -----------------------------------------------

def _edited_folder(made, tmp_path: Path, file: str, edit) -> Path:
    folder = copy_folder(made[1], tmp_path / "src")
    cfg = read_json(folder / file)
    edit(cfg)
    write_json(folder / file, cfg)
    return folder


@pytest.mark.parametrize("missing", ["model_index.json", "unet/config.json", "scheduler/scheduler_config.json",
                                     "unet/diffusion_pytorch_model.safetensors"])
def test_a_missing_file_is_named(made, tmp_path, missing):
    folder = copy_folder(made[1], tmp_path / "src")
    (folder / missing).unlink()
    _refused_import(folder, tmp_path, rf"{missing} is missing")


def test_a_pickle_is_never_loaded(made, tmp_path):
    folder = copy_folder(made[1], tmp_path / "src")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    _refused_import(folder, tmp_path, r"is missing \(diffusion_pytorch_model\.bin is there, a pickle")


def test_a_corrupt_weights_file_is_named(made, tmp_path):
    folder = copy_folder(made[1], tmp_path / "src")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    _refused_import(folder, tmp_path, r"cannot read .*diffusion_pytorch_model\.safetensors")


@pytest.mark.parametrize("file, edit, match", [
    ("model_index.json", lambda c: c.update(_class_name="StableDiffusionPipeline"),
     r"_class_name='StableDiffusionPipeline': only \['DDIMPipeline', 'DDPMPipeline'\]"),
    ("unet/config.json", lambda c: c.update(_class_name="UNet2DConditionModel"),
     r"_class_name='UNet2DConditionModel': only UNet2DModel"),
    ("scheduler/scheduler_config.json", lambda c: c.update(_class_name="EulerDiscreteScheduler"),
     r"_class_name='EulerDiscreteScheduler'"),
    ("scheduler/scheduler_config.json", lambda c: c.update(beta_schedule="scaled_linear"),
     r"beta_schedule='scaled_linear'"),
    ("scheduler/scheduler_config.json", lambda c: c.update(thresholding=True), r"thresholding=True"),
    ("scheduler/scheduler_config.json", lambda c: c.update(shift=3.0), r"shift=3\.0: a scheduler setting"),
    ("unet/config.json", lambda c: c.update(resnet_time_scale_shift="spatial"),
     r"resnet_time_scale_shift='spatial'"),
    ("unet/config.json", lambda c: c.update(time_embedding_type="fourier"), r"time_embedding_type='fourier'"),
    ("unet/config.json", lambda c: c.update(norm_eps=1e-6), r"norm_eps=1e-06: undiffuse has no such option"),
    ("unet/config.json", lambda c: c.update(down_block_types=["DownBlock2D", "SkipDownBlock2D"]),
     r"SkipDownBlock2D has no undiffuse counterpart"),
    ("unet/config.json", lambda c: c.update(up_block_types=["UpBlock2D", "UpBlock2D"]), r"up_block_types="),
    ("unet/config.json", lambda c: c.update(norm_num_groups=3), r"norm_num_groups=3: must divide"),
    ("unet/config.json", lambda c: c.update(mystery_option=1), r"mystery_option=1: a UNet2DModel setting"),
    ("unet/config.json", lambda c: c.update(layers_per_block="2"), r"config\.json: a setting has a value of the wrong"),
    ("unet/config.json", lambda c: c.update(norm_num_groups=None), r"config\.json: a setting has a value of the wrong"),
    ("scheduler/scheduler_config.json", lambda c: c.update(clip_sample_range="one"),
     r"scheduler_config\.json: a setting has a value of the wrong type or form \(ValueError"),
], ids=["pipeline", "unet-class", "scheduler-class", "scaled-linear", "thresholding", "sched-key", "spatial", "fourier", "eps",
        "down-block", "up-block", "groups", "unknown-key", "wrong-type",
        "groups-none", "wrong-type-scheduler"])
def test_unknown_or_inexpressible_configs_are_refused(made, tmp_path, file, edit, match):
    _refused_import(_edited_folder(made, tmp_path, file, edit), tmp_path, match)


@pytest.mark.parametrize("edit, match", [
    (lambda t: t.update({"conv_in.weight": torch.zeros(8, 1, 5, 5)}),
     r"tensor 'conv_in\.weight' is torch\.float32 \(8, 1, 5, 5\), but unet/config\.json implies a float "
     r"\(8, 1, 3, 3\)"),
    (lambda t: t.pop("mid_block.attentions.0.to_k.weight"), r"lacks tensor 'mid_block\.attentions\.0\.to_k\.weight'"),
    (lambda t: t.update({"extra.weight": torch.zeros(1)}), r"holds tensor 'extra\.weight'"),
    (lambda t: t["time_proj.weight"].mul_(2), r"tensor 'time_proj\.weight' is a learned time table that is not"),
], ids=["shape", "missing", "extra", "time-table"])
def test_tensors_that_do_not_fit_the_config_are_named(made, tmp_path, edit, match):
    folder = copy_folder(made[1], tmp_path / "src")
    edit_unet_tensors(folder, edit)
    _refused_import(folder, tmp_path, match)


def test_import_target_that_is_not_empty_is_refused(made, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(InteropError, match="--out .* exists and is not empty"):
        import_diffusers(made[1], tmp_path / "out")
    assert (tmp_path / "out" / "config.json").read_text() == "{}"


# --- the scheduler map, both ways -------------------------------------------------------------------

@pytest.mark.parametrize("schedule, steps", [("linear", 1000), ("linear", 500), ("cosine", 1000), ("sigmoid", 1000)])
def test_schedules_map_both_ways(schedule, steps):
    den = {"prediction": "v", "learn_variance": False, "clip_x0": None}
    cfg = scheduler_to_diffusers(DDPM(steps, schedule), den, "DDIMScheduler")
    process, back = scheduler_from_diffusers(cfg, "here")
    assert process == {"type": "ddpm", "num_steps": steps, "schedule": schedule}
    assert back["prediction"] == "v" and back["clip_x0"] is None
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler.from_config(cfg)  # diffusers' own table from the config: our betas
    torch.testing.assert_close(sched.betas.double(), DDPM(steps, schedule).betas, rtol=0, atol=1e-7)


def test_a_continuous_process_is_refused():
    with pytest.raises(InteropError, match="process 'vp'"):
        scheduler_to_diffusers(VP(), {"prediction": "eps", "learn_variance": False, "clip_x0": None}, "DDIMScheduler")


def test_cli_reports_a_refusal(made, tmp_path, capsys):
    from undiffuse.cli import main

    code = main(["export", "--run", str(OLD_RUNS / "edm"), "--to", "diffusers", str(tmp_path / "out")])
    assert code == 2 and "process 've'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert checkpoint(made[0]).is_dir()
