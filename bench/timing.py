"""Timing helpers shared by bench/train_throughput.py and bench/sample_throughput.py.

* ``interleaved``: every case once per round, rounds repeated, medians reported, so that load from
  other processes on a shared machine hits every case alike;
* ``matmul_peak``: the FLOP/s of large square matmuls in a loop, the denominator of "% of peak";
* ``count_flops``: torch's FlopCounterMode over one call;
* ``PeakMemory``: the peak memory of one call above what was resident before it: on CUDA the
  allocator's peak; on Linux the process's peak RSS (VmHWM, reset through /proc/self/clear_refs);
  elsewhere ``ru_maxrss`` (only grows, so it under-reports later cases). ``method`` says which.

On CUDA every timing synchronises the device before reading the clock.
"""
from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def sync(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: torch.device | str) -> float:
    """Seconds one call takes, the device's queue drained before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, device: torch.device | str,
                warmup: int = 1) -> dict[str, list[float]]:
    """Per case, the seconds of ``repeats`` calls, taken round-robin after ``warmup`` calls each."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(repeats):
        for name, fn in cases.items():
            times[name].append(time_call(fn, device))
        # One line per round on stderr: a run cut short still leaves its numbers.
        print(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()),
              file=sys.stderr, flush=True)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def matmul_loop(dtype: torch.dtype, device: torch.device | str, n: int | None = None):
    """(a loop of 4 n x n matmuls in ``dtype``, its FLOPs): time it to get the matmul peak."""
    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 2048)
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    out = torch.empty(n, n, device=dev, dtype=dtype)

    def loop():
        for _ in range(4):
            torch.mm(a, b, out=out)
    return loop, 4 * 2 * n**3


def matmul_peak(dtype: torch.dtype, device: torch.device | str, n: int | None = None,
                repeats: int = 5) -> float:
    """FLOP/s of large matmuls in ``dtype`` (median of ``repeats`` loops of 4 products)."""
    loop, flops = matmul_loop(dtype, device, n)
    loop()
    return flops / median([time_call(loop, device) for _ in range(repeats)])


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` as torch's FlopCounterMode counts them (matmuls, convs, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _vm_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            found = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(found.group(1)) if found else None
    except OSError:
        return None


class PeakMemory:
    """``with PeakMemory(device) as m: step()`` then ``m.mib``: the step's peak above the start."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.method, self.mib = "", float("nan")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.method, self.start = "torch.cuda.max_memory_allocated", torch.cuda.memory_allocated()
            return self
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            self.method, self.start = "peak RSS (VmHWM reset via /proc/self/clear_refs)", _vm_kib("VmRSS") * 1024
        except (OSError, TypeError):
            # ru_maxrss never resets: only a case that grows past every earlier one shows its peak.
            self.method = "ru_maxrss delta (psutil has no peak RSS on Linux; does not reset)"
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        elif self.method.startswith("peak RSS"):
            peak = _vm_kib("VmHWM") * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.mib = max(0, peak - self.start) / 2**20


def machine(device: torch.device | str) -> str:
    """One line naming the hardware, torch, threads and the load average right now."""
    dev = torch.device(device)
    if dev.type == "cuda":
        hw = torch.cuda.get_device_name(dev)
    else:
        hw = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                info = f.read()
            hw = re.search(r"model name\s*:\s*(.*)", info).group(1)
            flags = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in info]
            hw += f" ({', '.join(flags) or 'no AVX-512'})"
        except (OSError, AttributeError):
            pass
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    return (f"{hw}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"THP_MEM_ALLOC_ENABLE={thp}; load average {load()}")


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"
