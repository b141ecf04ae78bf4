"""Sampling throughput of undiffuse against Hugging Face diffusers, side by side in one run: images/s
of a DDIM loop with classifier-free guidance (conditional and unconditional passes batched in one
forward), achieved FLOP/s as a fraction of the measured matmul peak, peak memory.

    python bench/sample_throughput.py                 # the full table (docs/speed.md)
    python bench/sample_throughput.py --quick         # smoke run: 5 steps, 1 round, few cases
    python bench/sample_throughput.py --device cuda   # the same on a GPU

The models are those of bench/train_throughput.py. undiffuse samples through its own library path
(``Pipeline.sample``: Denoiser, ClassifierFreeGuidance, the DDIM sampler, torch.inference_mode);
diffusers through its UNet in a plain loop with its DDIMScheduler, the same batch and guidance, under
torch.inference_mode. Modes: fp32; bf16 (autocast over float32 weights); bf16w (autocast over a
bf16 copy of the weights: undiffuse's bf16 default); +cl channels_last; +compile torch.compile.
Images/s are for ``--steps`` steps (50 by default, as the demo's grids).
"""
from __future__ import annotations

import os

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as in train_throughput.py: read at torch's first allocation

import torch  # noqa: E402

from train_throughput import build, forward, parser, run  # noqa: E402
from undiffuse.denoiser import Denoiser  # noqa: E402
from undiffuse.pipeline import Pipeline  # noqa: E402
from undiffuse.processes import make_process  # noqa: E402

DEFAULT_CASES = ("diffusers:fp32", "diffusers:bf16", "diffusers:bf16w", "ref:fp32", "ref:bf16", "ref:bf16w",
                 "ref:bf16w+cl", "demo:bf16", "demo:bf16w")  # +compile on request, as in train_throughput.py
QUICK_CASES = ("diffusers:bf16w", "ref:bf16", "ref:bf16w", "demo:bf16w")
GUIDANCE = 2.0


def diffusers_case(mode: str, n: int, steps: int, device: torch.device):
    """A plain diffusers sampling loop: UNet + DDIMScheduler, CFG batched, like its pipelines."""
    from diffusers import DDIMScheduler

    net = build("diffusers").to(device).eval()
    fmt = torch.channels_last if "+cl" in mode else torch.contiguous_format
    net = net.to(memory_format=fmt)
    if "bf16w" in mode:
        net = net.to(torch.bfloat16)
    if "+compile" in mode:
        net.compile()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    y = torch.cat([torch.arange(n, device=device) % 10, torch.full((n,), 10, device=device)])

    def sample():
        sched.set_timesteps(steps)
        x = torch.randn(n, 1, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled="bf16" in mode):
            for t in sched.timesteps:
                both = torch.cat([x, x]).contiguous(memory_format=fmt)
                eps_c, eps_u = forward("diffusers", net, both, t.expand(2 * n).to(device), y).float().chunk(2)
                x = sched.step(eps_u + GUIDANCE * (eps_c - eps_u), t, x).prev_sample
        return x
    return sample, net


def undiffuse_case(model: str, mode: str, n: int, steps: int, device: torch.device):
    """undiffuse's own path: Pipeline.sample (DDIM, trailing, CFG batched, inference_mode)."""
    net = build(model).to(device)
    if "+cl" in mode:
        net = net.to(memory_format=torch.channels_last)
    pipe = Pipeline(Denoiser(net, make_process("ddpm:cosine:1000"), "eps", clip_x0=1.0), (1, 32, 32), 10)
    pipe.fast.bf16_weights = "bf16w" in mode
    labels = torch.arange(n) % 10

    def sample():
        return pipe.sample(n, sampler="ddim", num_inference_steps=steps, class_labels=labels, guidance=GUIDANCE,
                           bf16="bf16" in mode, compile="+compile" in mode)
    return sample, net


def main() -> None:
    ap = parser(__doc__, DEFAULT_CASES, repeats=3, quick_help="smoke run: 5 steps, 1 round, a few cases")
    ap.add_argument("--n", type=int, default=16, help="images per loop (the network sees 2n: CFG)")
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.steps = 1, 5
    device = torch.device(args.device)
    if device.type != "cpu":
        print("note: undiffuse's Pipeline keeps its model where it is; the sampler's tiny per-step "
              "coefficient tensors are computed on the CPU")

    def make_case(model: str, mode: str):
        if model == "diffusers":
            return diffusers_case(mode, args.n, args.steps, device)
        return undiffuse_case(model, mode, args.n, args.steps, device)

    args.batch = args.n  # the table's images per timed call
    run(args, make_case, f"Sampling, {args.n} images x {args.steps} DDIM steps, CFG w = {GUIDANCE} "
                                   f"(2 x {args.n} per forward), {args.device}", (DEFAULT_CASES, QUICK_CASES))


if __name__ == "__main__":
    main()
