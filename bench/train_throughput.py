"""Training throughput of undiffuse's U-Nets against Hugging Face diffusers' UNet2DModel, side by
side in one run: images/s, achieved FLOP/s as a fraction of the measured matmul peak, peak memory.

    python bench/train_throughput.py                  # the full table (docs/speed.md)
    python bench/train_throughput.py --quick          # smoke run: 1 round, few cases
    python bench/train_throughput.py --device cuda    # the same on a GPU (CUDA events, bf16 autocast)

Models: undiffuse's MNIST demo U-Net (preset "mnist-demo"); diffusers' UNet2DModel at the issue's
reference configuration (32x32x1, block_out_channels (64, 128, 128, 256), 2 layers per block,
attention at 16x16 with attention_head_dim 8, 11 class embeddings); and undiffuse's U-Net built to
the same configuration (identical parameter count, 17,218,433). Every case runs the same step:
eps-prediction MSE on x + noise, backward, AdamW (foreach), batch 64. Cases run interleaved
(one step of each per round) and the medians are reported, so load from other processes hits
every case alike. Modes: fp32; bf16 autocast; +cl channels_last; +compile torch.compile (inductor);
"sdpa" forces SDPA attention (undiffuse's default in bf16 on CPU is the chunked path).

diffusers is a benchmark-only extra (`pip install -e '.[bench]'`).
"""
from __future__ import annotations

import os

# torch reads this once, at its first large allocation: THP-backed buffers cut the page faults that
# dominate big allocations on some VMs (docs/speed.md). It applies to every case alike.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import timing  # noqa: E402
from undiffuse.nets import build_net  # noqa: E402
from undiffuse.nets.attention import attention_backend  # noqa: E402

REF = dict(in_channels=1, image_size=32, channels=64, channel_mult=(1, 2, 2, 4), num_res_blocks=2,
           attn_resolutions=(16,), head_dim=8, scale_shift=False, dropout=0.0, num_classes=10)
MODELS = ("demo", "diffusers", "ref", "ref-hd64")
DEFAULT_CASES = ("diffusers:fp32", "diffusers:bf16", "diffusers:bf16+cl", "ref:fp32", "ref:bf16 sdpa",
                 "ref:bf16", "ref:bf16+cl", "ref-hd64:bf16", "demo:fp32", "demo:bf16", "demo:bf16+cl")
# Compilation is not kept (docs/speed.md) and costs minutes: ask for it, e.g. --cases demo:bf16,demo:bf16+compile
QUICK_CASES = ("diffusers:bf16", "ref:bf16", "ref:bf16+cl", "demo:bf16")


def diffusers_ref() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(64, 128, 128, 256), attention_head_dim=8, num_class_embeds=11,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def build(model: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if model == "diffusers":
        return diffusers_ref()
    if model == "ref":
        return build_net("unet", **REF)
    if model == "ref-hd64":  # the same net with undiffuse's default head_dim (2 heads at 128 channels)
        return build_net("unet", **{**REF, "head_dim": 64})
    return build_net("mnist-demo", in_channels=1, image_size=32, num_classes=10)


def forward(model: str, net, x, t, y):
    """The network call either family expects (diffusers: integer steps, .sample)."""
    if model == "diffusers":
        return net(x, t, class_labels=y).sample
    return net(x, t.float(), y)


def mode_context(mode: str, device: torch.device):
    """autocast for bf16 modes, and the attention backend a mode asks for."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device.type, dtype=torch.bfloat16, enabled="bf16" in mode))
    if "sdpa" in mode:
        stack.enter_context(attention_backend("sdpa"))
    return stack


def prepare(model: str, mode: str, device: torch.device):
    """A fresh net in the mode's memory format (compiled when asked), with its input format."""
    net = build(model).to(device)
    fmt = torch.channels_last if "+cl" in mode else torch.contiguous_format
    net = net.to(memory_format=fmt)
    if "+compile" in mode:
        net.compile()
    return net, fmt


def train_case(model: str, mode: str, batch: int, device: torch.device):
    """(step function, net) for one training case; every case sees the same data."""
    net, fmt = prepare(model, mode, device)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, foreach=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 32, 32, generator=g).to(device).contiguous(memory_format=fmt)
    noise = torch.randn(batch, 1, 32, 32, generator=g).to(device).contiguous(memory_format=fmt)
    t = torch.randint(0, 1000, (batch,), generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)

    def step():
        with mode_context(mode, device):
            loss = F.mse_loss(forward(model, net, x + noise, t, y).float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step, net


def params_m(net) -> float:
    return sum(p.numel() for p in net.parameters()) / 1e6


def table(title: str, cases: list[str], times, flops, mem, nets, peak, batch: int, extra=None) -> None:
    """One markdown row per case: images/s, ratio to diffusers' best, GFLOP/s, % of peak, memory."""
    rates = {c: batch / timing.median(times[c]) for c in cases}
    best_diffusers = max((r for c, r in rates.items() if c.startswith("diffusers")), default=None)
    print(f"\n{title}\n")
    print("| model:mode | params (M) | images/s | x diffusers' best | GFLOP/s | % of peak | peak MiB |"
          + (" compile s |" if extra else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if extra else ""))
    for c in cases:
        model, mode = c.split(":")
        achieved = flops[model] * rates[c] / batch
        dtype = "bf16" if "bf16" in mode else "fp32"
        ratio = f"{rates[c] / best_diffusers:.2f}" if best_diffusers else "-"
        row = (f"| {c} | {params_m(nets[c]):.2f} | {rates[c]:.3g} | {ratio} | {achieved / 1e9:.0f} | "
               f"{100 * achieved / peak[dtype]:.1f} % of {dtype} | {mem[c]:.0f} |")
        if extra:
            row += f" {extra.get(c, ''):} |"
        print(row, flush=True)


def run(args, make_case, title: str, defaults: tuple[tuple[str, ...], tuple[str, ...]]) -> None:
    """Build the cases, count FLOPs once per model, time interleaved rounds, print the table.

    The matmul peak is timed inside the same rounds (its median, like the cases'), so that "% of
    peak" compares numbers taken under the same contention."""
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {timing.machine(device)}")
    if args.modes:  # every mode for every model (the older command line of docs/results.md)
        cases = [f"{model}:{mode}" for model in args.models.split(",") for mode in args.modes.split(",")]
    else:
        cases = list(args.cases.split(",")) if args.cases else list(defaults[1] if args.quick else defaults[0])
    fns, nets, mem, compile_s, flops = {}, {}, {}, {}, {}
    for c in cases:
        model, mode = c.split(":")
        fns[c], nets[c] = make_case(model, mode)
        t0 = time.perf_counter()
        with timing.PeakMemory(device) as m:
            if "+compile" in mode or model in flops:
                fns[c]()  # the first call: compilation where asked, allocator warm-up otherwise
            else:  # FLOPs once per model, from its first eager call (they do not depend on the mode)
                flops[model] = timing.count_flops(fns[c])
        first = time.perf_counter() - t0
        mem[c] = m.mib
        print(f"  {c}: first call {first:.1f} s", file=sys.stderr, flush=True)
        if "+compile" in mode:
            compile_s[c] = f"{first - timing.time_call(fns[c], device):.0f}"
    for model in {c.split(":")[0] for c in cases} - set(flops):
        flops[model] = timing.count_flops(make_case(model, "fp32")[0])
    loops = {dtype: timing.matmul_loop(getattr(torch, name), device) for dtype, name in
             (("fp32", "float32"), ("bf16", "bfloat16"))}
    for dtype, (loop, _) in loops.items():
        fns["matmul " + dtype] = loop
        loop()
    times = timing.interleaved(fns, args.repeats, device, warmup=0)  # the first calls above warmed up
    peak = {dtype: loops[dtype][1] / timing.median(times.pop("matmul " + dtype)) for dtype in loops}
    print(f"measured matmul peak (median over the rounds): fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s")
    table(title + f" (load average after: {timing.load()}; memory: {m.method})", cases, times, flops,
          mem, nets, peak, args.batch, compile_s)


def parser(doc: str, default_cases: tuple[str, ...], repeats: int, quick_help: str) -> argparse.ArgumentParser:
    """The flags both throughput benches take; the caller adds its own (--batch, --n, --steps)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds (medians reported)")
    ap.add_argument("--cases", default=None, help=f"comma-separated model:mode list, models {MODELS}; "
                                                  f"default: {','.join(default_cases)}")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads (default: torch's); 1 on a machine shared with other jobs, "
                         "where spinning OpenMP barriers make every multi-threaded small op wait")
    ap.add_argument("--models", default="demo,diffusers,ref", help="with --modes: the models to run")
    ap.add_argument("--modes", default=None, help="every one of these modes (e.g. fp32,bf16,bf16+cl) for "
                                                  "every --models model, instead of --cases")
    return ap


def main() -> None:
    ap = parser(__doc__, DEFAULT_CASES, repeats=4, quick_help="smoke run: 1 round of a few cases")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    if args.quick:
        args.repeats = 1
    device = torch.device(args.device)

    run(args, lambda model, mode: train_case(model, mode, args.batch, device),
        f"Training, batch {args.batch}, {args.device}", (DEFAULT_CASES, QUICK_CASES))


if __name__ == "__main__":
    main()
