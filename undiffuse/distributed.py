"""Multi-process training helpers: process-group setup from torchrun's environment, rank queries
and the few collectives the trainer needs.

``torchrun --nproc_per_node N -m undiffuse train ...`` starts N copies of the command with
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set (multi-node: the same on every
node through torchrun's rendezvous). ``process_group`` turns those into a process group: gloo
for CPU training, nccl for CUDA. Without them nothing is initialised and every helper below
answers as for one process, so single-process code needs no branches.
"""
from __future__ import annotations

import functools
import os
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator, Sequence

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")


def launched_by_torchrun() -> bool:
    """True when torchrun (or any launcher speaking its env:// protocol) started this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def local_rank() -> int:
    """This process's index on its node: which GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    """True inside an initialised process group (even one of a single process)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Rank 0 alone writes files and prints: the others hold the same state."""
    return rank() == 0


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else the CPU. Under torchrun each process takes the GPU
    of its LOCAL_RANK, so N processes on a node drive N GPUs."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r}; choose one of {DEVICES}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; "
                         "use --device cpu (or auto)")
    return torch.device("cuda", local_rank())


@contextmanager
def process_group(device: str | torch.device = "auto", timeout: timedelta | None = None) -> Iterator[None]:
    """Initialise the process group from torchrun's environment for the body, then tear it down.

    Does nothing outside torchrun or when a group already exists (a caller that set one up keeps
    it). Backend: nccl for CUDA, gloo for the CPU. ``timeout``: how long a collective may wait
    (torch's default: 10 minutes for nccl, 30 for gloo); evaluation, where ranks wait while rank 0
    measures, asks for more.
    """
    if not launched_by_torchrun() or is_distributed():
        yield
        return
    device = resolve_device(device) if isinstance(device, str) else device
    if device.type == "cuda":
        torch.cuda.set_device(device)  # nccl binds each process to the current device
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok:
            # Let rank 0 finish its last writes before anyone tears the group down. Not after an
            # error: the other ranks may never get here, and torchrun stops them anyway.
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first, then the others: for work that downloads or caches files,
    so that N processes do not write the same cache at once."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of ``x`` (a new tensor; ``x`` itself is left alone)."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any: decisions that change which collectives
    run next (stop early, for one) must be the same on all ranks, or they deadlock."""
    if not is_distributed():
        return flag
    t = torch.tensor([int(flag)], device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_cat(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated along ``dim`` in rank order, on every rank.

    The shards may differ in size along ``dim`` (e.g. N samples split over W ranks unevenly):
    sizes are exchanged first and the shards padded to the largest. Not differentiable.
    """
    if not is_distributed():
        return x
    x = x.detach().contiguous()
    size = torch.tensor([x.shape[dim]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    pad = list(x.shape)
    pad[dim] = max(sizes) - x.shape[dim]
    padded = torch.cat([x, x.new_zeros(pad)], dim=dim)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p.narrow(dim, 0, n) for p, n in zip(parts, sizes)], dim=dim)


def shard(n: int) -> slice:
    """This rank's contiguous share of ``n`` items, which must split evenly."""
    w, r = world_size(), rank()
    if n % w:
        raise ValueError(f"{n} items do not split evenly over {w} processes")
    k = n // w
    return slice(r * k, (r + 1) * k)


def shard_batches(n: int, batch: int) -> list[tuple[int, int]]:
    """This rank's ``(start, size)`` batches of ``n`` items taken ``batch`` at a time.

    The batches are dealt out in contiguous groups (sizes differing by at most one batch), so
    ``all_gather_cat`` of the per-rank results restores the single-process order, and a caller
    that seeds each batch by its ``start`` draws exactly what one process draws. A rank may get
    no batch at all when there are fewer batches than ranks.
    """
    starts = list(range(0, n, batch))
    w, r = world_size(), rank()
    per, extra = divmod(len(starts), w)
    first = r * per + min(r, extra)
    mine = starts[first:first + per + (r < extra)]
    return [(s, min(batch, n - s)) for s in mine]


def gather_batches(n: int, batch: int, draw: Callable[[int, int], torch.Tensor],
                   item_shape: Sequence[int]) -> torch.Tensor:
    """``draw(start, size)`` for this rank's ``shard_batches(n, batch)``, gathered from every rank
    in order and returned on the CPU: (n, *item_shape). Every rank of a process group must call it.
    A rank without a batch joins the gather with an empty tensor where the backend communicates."""
    parts = [draw(start, size) for start, size in shard_batches(n, batch)]
    if parts:
        mine = torch.cat(parts)
    else:
        mine = torch.zeros(0, *item_shape, device=_comm_device() if is_distributed() else None)
    return all_gather_cat(mine).cpu()


def _comm_device() -> torch.device:
    """Where small control tensors live: nccl communicates CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def backend() -> str | None:
    """The process group's backend ("gloo", "nccl"), None outside one."""
    return dist.get_backend() if is_distributed() else None


@functools.cache
def cpu_model_and_features() -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of the instruction sets that change bf16 speed it has
    (AVX-512, AVX-512 BF16, AMX), read once from /proc/cpuinfo (elsewhere: the platform's name, none)."""
    import platform

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return cpu, tuple(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags)


def machine(device: torch.device) -> dict:
    """What trains the run (recorded in its config.json, rewritten at every start or resume): the CPU
    model and the instruction sets that change bf16 speed, the GPU if training runs on one, the
    number of processes and threads, and the torch version."""
    cpu, features = cpu_model_and_features()
    return {"cpu": cpu, "cpu_features": list(features),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "processes": world_size(), "threads": torch.get_num_threads(), "torch": torch.__version__}
