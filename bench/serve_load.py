"""A bounded load test of `undiffuse serve` (not part of the suite): N clients on 127.0.0.1 ask for
samples for a fixed time, each waiting for its draw to finish (server-sent events) before the next.

Records draws served, queue rejections (429, with a short back-off before the client asks again),
latency from request to last event (p50 / p90 / p99), the server's resident memory before and after
(after one warm-up draw, so the model is loaded) and that the server is alive at the end; prints a
Markdown table.

    OMP_NUM_THREADS=1 python bench/serve_load.py --clients 8 --seconds 60
    python bench/serve_load.py --runs runs --run mnist --steps 20 --batch 4

Without --runs it trains a tiny run (an 8x8-digits U-Net, seconds) in a temporary folder. Traffic
goes only to 127.0.0.1; every loop stops at the deadline.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def tiny_runs(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    import undiffuse
    from undiffuse import TrainConfig

    cfg = TrainConfig(data="digits", net="tiny", class_conditional=False, max_train_steps=6, batch_size=16,
                      sample_every=0, num_samples=4, sample_steps=2, out=str(folder / "tiny"))
    undiffuse.train(cfg, progress=False)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def draw(client: httpx.Client, url: str, run: str, settings: dict) -> tuple[str, float]:
    """One request: ("served" | "rejected" | "busy" | "failed: ...", seconds until its last event)."""
    t0 = time.perf_counter()
    r = client.post(f"{url}/api/sample", params={"name": run}, json=settings)
    if r.status_code in (409, 429):
        return ("rejected" if r.status_code == 429 else "busy"), time.perf_counter() - t0
    if r.status_code != 200:
        return f"failed: {r.status_code} {r.text[:100]}", time.perf_counter() - t0
    last = None
    with client.stream("GET", f"{url}/api/jobs/{r.json()['job']}/events") as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                last = json.loads(line[5:])["type"]
    return ("served" if last == "done" else f"failed: {last}"), time.perf_counter() - t0


def client_loop(url: str, run: str, settings: dict, deadline: float, out: list, lock: threading.Lock) -> None:
    with httpx.Client(timeout=120) as client:
        client.get(url + "/")  # the page's cookie: one visitor per client
        while time.monotonic() < deadline:
            try:
                result = draw(client, url, run, settings)
            except httpx.HTTPError as e:
                result = (f"failed: {type(e).__name__}", 0.0)
            with lock:
                out.append(result)
            if result[0] == "rejected":
                time.sleep(0.05)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default=None, help="a runs folder (default: a tiny run trained in a temp folder)")
    p.add_argument("--run", default="tiny")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-queue", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = Path(args.runs) if args.runs else tiny_runs(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "undiffuse", "serve", "--runs", str(runs), "--port",
                                   str(port), "--max-queue", str(args.max_queue)], cwd=ROOT, env=os.environ.copy())
        try:
            return run_load(args, server, url)
        finally:
            server.terminate()
            server.wait(10)


def run_load(args, server: subprocess.Popen, url: str) -> int:
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url + "/api/runs", timeout=2)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.2)
    settings = {"steps": args.steps, "batch": args.batch, "sampler": "ddim"}
    with httpx.Client(timeout=120) as warm:
        warm.get(url + "/")
        assert draw(warm, url, args.run, settings)[0] == "served", "the warm-up draw failed"
    before = rss_mib(server.pid)
    results: list = []
    lock = threading.Lock()
    end = time.monotonic() + args.seconds
    threads = [threading.Thread(target=client_loop, args=(url, args.run, settings, end, results, lock))
               for _ in range(args.clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = rss_mib(server.pid)
    alive = server.poll() is None and httpx.get(url + "/api/runs", timeout=5).status_code == 200
    report(args, results, wall, before, after, alive)
    return 0 if alive and not any(r[0].startswith("failed") for r in results) else 1


def report(args, results, wall, before, after, alive) -> None:
    served = [s for kind, s in results if kind == "served"]
    count = {k: sum(r[0] == k for r in results) for k in ("served", "rejected", "busy")}
    failed = [r[0] for r in results if r[0].startswith("failed")]
    p50, p90, p99 = (np.percentile(served, q) if served else float("nan") for q in (50, 90, 99))
    print(f"| clients | seconds | steps x batch | max queue | served | draws/s | rejected (queue full) | "
          f"failed | p50 s | p90 s | p99 s | RSS before MiB | RSS after MiB | alive |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    print(f"| {args.clients} | {wall:.0f} | {args.steps} x {args.batch} | {args.max_queue} | {count['served']} | "
          f"{count['served'] / wall:.1f} | {count['rejected']} | {len(failed)} | {p50:.2f} | {p90:.2f} | "
          f"{p99:.2f} | {before:.0f} | {after:.0f} | {'yes' if alive else 'NO'} |")
    if failed:
        print("failures:", sorted(set(failed))[:5])


if __name__ == "__main__":
    sys.exit(main())
