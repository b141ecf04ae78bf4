"""diffusers' UNet2DModel at the reference configuration of docs/speed.md (bench/train_throughput.py's
``diffusers_ref``: 32x32x1, block_out_channels (64, 128, 128, 256), attention at 16x16 with heads of 8,
11 class embeddings), randomly initialised, saved by diffusers and imported.

* The import is the bench's own undiffuse counterpart (``REF``): same architecture, same parameter count.
* Its predictions equal diffusers' at every timestep tried (the net, and the denoiser at level
  (n + 1) / N, which is diffusers' timestep n): measured max |difference| 1.3e-6 on outputs of size
  ~1 (AMD EPYC, Zen 4, float32); the test allows 1e-5.
* Exported again, the folder holds diffusers' tensors bit for bit (positional time embedding: the
  label_scale / label_shift the import set map back to it).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import undiffuse
from undiffuse.interop.export import export_diffusers
from undiffuse.interop.import_ import import_diffusers
from undiffuse.nets import build_net

from helpers_interop import max_abs

pytest.importorskip("diffusers")
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
from diffusers import DDIMPipeline, DDIMScheduler  # noqa: E402

BENCH = Path(__file__).resolve().parents[1] / "bench"
TOL = 1e-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(diffusers' net, the folder it was saved to, the imported run, the bench module)."""
    mp = pytest.MonkeyPatch()
    mp.syspath_prepend(str(BENCH))
    import train_throughput as bench
    mp.undo()
    torch.manual_seed(0)
    unet = bench.diffusers_ref().eval()
    root = tmp_path_factory.mktemp("reference")
    # clip_sample=False: with clipping our denoiser's eps is recomputed from the clamped x0, no longer the net's
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon",
                          clip_sample=False, timestep_spacing="trailing")
    DDIMPipeline(unet=unet, scheduler=sched).save_pretrained(root / "diffusers")  # safetensors by default
    return unet, root / "diffusers", import_diffusers(root / "diffusers", root / "run"), bench


def test_imports_as_the_bench_counterpart(reference):
    unet, _, run, bench = reference
    net = undiffuse.load(run).denoiser.net
    expected = build_net("unet", **bench.REF, label_scale=1.0, label_shift=-1.0)
    assert net.config == expected.config
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in unet.parameters())


def test_same_predictions_as_diffusers(reference):
    unet, _, run, _ = reference
    den = undiffuse.load(run).denoiser
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 32, 32, generator=g)
    labels = torch.tensor([0, 4, 9, 10])  # 10: the last class embedding, undiffuse's null class
    worst = 0.0
    for step in (0, 1, 250, 999):  # diffusers' 0-based timestep n: our level (n + 1) / 1000
        with torch.no_grad():
            theirs = unet(x, torch.tensor(step), class_labels=labels).sample
            net_out = den.net(x, torch.tensor(float(step + 1)), labels)
            eps = den(x, torch.tensor((step + 1) / 1000), labels).eps
        worst = max(worst, max_abs(net_out, theirs), max_abs(eps, theirs))
    print(f"max |ours - diffusers| = {worst:.2g}")
    assert worst < TOL


def test_export_gives_back_diffusers_tensors(reference, tmp_path):
    _, folder, run, _ = reference
    out = export_diffusers(run, tmp_path / "again")
    theirs = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    back = load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))
    assert back.keys() == theirs.keys()
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)
    config = json.loads((out / "unet" / "config.json").read_text())
    assert config["time_embedding_type"] == "positional" and config["attention_head_dim"] == 8


def test_label_shift_embeds_the_shifted_label():
    """The U-Net option import relies on: a net with label_shift=-1 at label n + 1 is the same net at
    label n (n + 1 - 1 is exact in float32); the default (1, 0) computes nothing extra."""
    torch.manual_seed(0)
    plain = build_net("tiny", num_groups=16)
    for p in plain.parameters():  # away from the zero init, so that the time embedding matters
        torch.nn.init.normal_(p, std=0.1)
    shifted = build_net("tiny", num_groups=16, label_shift=-1.0)
    shifted.load_state_dict(plain.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(shifted(x, torch.tensor([11.0, 500.0])), plain(x, torch.tensor([10.0, 499.0])))
    assert plain.config["label_scale"] == 1.0 and plain.config["label_shift"] == 0.0


def test_written_version_is_the_one_checked():
    """The folders say which diffusers they were written for: the release these tests ran (a new minor
    release may change the layout: rerun these tests, then update DIFFUSERS_VERSION)."""
    import diffusers

    from undiffuse.interop.diffusers_unet import DIFFUSERS_VERSION

    assert DIFFUSERS_VERSION.split(".")[:2] == diffusers.__version__.split(".")[:2]
