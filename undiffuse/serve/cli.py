"""`undiffuse serve`: the web page over a folder of runs (FastAPI + uvicorn, imported when run)."""
from __future__ import annotations

import argparse
import socket
import sys

from .limits import Limits

LOOPBACK = "127.0.0.1"
INSTALL = "pip install 'undiffuse[serve]'"


def add_serve(sub) -> None:
    d = Limits()
    p = sub.add_parser("serve", help="a web page to browse runs and sample from them",
                       description="Serve a web page that lists the runs under --runs (config, loss curve, "
                                   "pictures), samples from them step by step and restores with cold runs. "
                                   f"Needs the serve extra: {INSTALL}.")
    p.add_argument("--runs", default="runs", help="the folder that holds the run directories (default: runs)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--host", default=None,
                   help=f"address to listen on (default {LOOPBACK}: this machine only). Any other address "
                        "lets anyone who reaches it use the page: there is no login")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="most sampler steps a request may ask for (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help="most images a request may ask for (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="most jobs waiting or running server-wide; more are refused until one ends (default %(default)s)")
    p.add_argument("--max-upload-bytes", type=int, default=d.max_upload_bytes, help="largest upload accepted, in bytes (default %(default)s)")


def limits_from(args) -> Limits:
    for flag in ("max_steps", "max_batch", "max_queue", "max_upload_bytes", "port"):
        value = getattr(args, flag)
        if value < 1 or (flag == "port" and value > 65535):
            raise ValueError(f"--{flag.replace('_', '-')} must be " + ("in 1..65535" if flag == "port" else ">= 1")
                             + f", got {value}")
    return Limits(max_steps=args.max_steps, max_batch=args.max_batch, max_queue=args.max_queue,
                  max_upload_bytes=args.max_upload_bytes)


def check_port_free(host: str, port: int) -> None:
    """uvicorn would log a bind error and exit; say which flag to change instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); another server may hold the "
                             "port: choose another with --port") from None


def cmd_serve(args: argparse.Namespace) -> int:
    limits = limits_from(args)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(f"error: undiffuse serve needs FastAPI and uvicorn ({e.name} is missing): {INSTALL}",
              file=sys.stderr)
        return 2
    host = args.host or LOOPBACK
    loopback = host in (LOOPBACK, "localhost", "::1")
    # Only IPv4 / name loopbacks get the Host check (Starlette's check cannot parse "[::1]:port").
    if args.host is not None and not loopback:
        print(f"warning: serving on {host}: anyone who can reach this address can use the page and the "
              "machine's CPU (there is no login); use the default 127.0.0.1 unless you mean it", file=sys.stderr)
    allowed = ["127.0.0.1", "localhost"] if host in (LOOPBACK, "localhost") else None
    check_port_free(host, args.port)
    app = create_app(args.runs, limits, allowed_hosts=allowed)
    print(f"serving {app.state.runs.root} on http://{host}:{args.port}/ (Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=args.port, log_level="warning")
    return 0
