"""Fixtures of the web page's tests: a folder of tiny runs, and the server in a thread.

The folder holds one run trained here in seconds (``tiny``: an unconditional "tiny" U-Net on the
8x8 digits, with a loss log and a picture) and copies of three old-run fixtures: ``gaussian`` (class
labels), ``cold`` (blur, with its prior) and ``text`` (the fake test encoder of helpers_text).
"""
from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import helpers_text  # noqa: F401  (registers the fake-test encoder the text fixture was trained with)
import undiffuse
from undiffuse import TrainConfig

FIXTURES = Path(__file__).parent / "fixtures" / "old_runs"
pytest.importorskip("fastapi", reason="the serve extra: pip install 'undiffuse[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra: pip install 'undiffuse[serve]'")


def make_runs(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for kind in ("gaussian", "cold", "text"):
        shutil.copytree(FIXTURES / kind, root / kind)
    cfg = TrainConfig(data="digits", net="tiny", class_conditional=False, max_train_steps=6, batch_size=16,
                      lr=2e-3, warmup_steps=1, sample_every=0, num_samples=4, sample_steps=2, log_every=1,
                      out=str(root / "tiny"))
    undiffuse.train(cfg, progress=False)
    return root


_made: list[Path] = []


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    # Imported by two test modules, this fixture is defined twice: the folder is made once.
    if not _made:
        _made.append(make_runs(tmp_path_factory.mktemp("serve") / "runs"))
    return _made[0]


class LiveServer:
    """uvicorn serving ``app`` on a free loopback port in a background thread."""

    def __init__(self, app):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
