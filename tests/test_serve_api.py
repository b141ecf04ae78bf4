"""The web page's server at the API level (FastAPI's TestClient): the limits and the refusals.

Queue tests use a JobQueue without its worker (``start=False``), so jobs stay queued as long as the
test needs: no timing is involved.
"""
from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image

from helpers_serve import runs_root  # noqa: F401  (fixture)
from test_latent_training import ae_run, digits16, latent_run  # noqa: F401  (fixtures)
from fastapi.testclient import TestClient  # noqa: E402  (helpers_serve skips without the extra)
from undiffuse.serve.app import create_app
from undiffuse.serve.jobs import JobQueue
from undiffuse.serve.limits import Limits


def client(root, limits=None, queue=None, cookie="a") -> TestClient:
    c = TestClient(create_app(root, limits, queue=queue))
    c.cookies.set("undiffuse_client", cookie)
    return c


def error(response, status: int) -> str:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    return response.json()["error"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(size=(16, 16), mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 128).save(buf, format="PNG")
    return buf.getvalue()


def test_runs_are_listed_with_their_kind_and_capabilities(runs_root):
    c = client(runs_root)
    runs = {r["name"]: r for r in c.get("/api/runs").json()["runs"]}
    assert set(runs) == {"tiny", "gaussian", "cold", "text"}
    assert runs["cold"]["kind"].startswith("cold blur") and "text" in runs["text"]["kind"]
    caps = {name: c.get("/api/run", params={"name": name}).json()["capabilities"] for name in runs}
    assert caps["cold"]["can_restore"] and not caps["tiny"]["can_restore"]
    assert caps["text"]["takes_prompts"] and caps["gaussian"]["takes_labels"] and not caps["tiny"]["takes_labels"]
    log = c.get("/api/log", params={"name": "tiny"}).json()
    assert [p[0] for p in log["points"]] == [1, 2, 3, 4, 5, 6]
    assert c.get("/api/log", params={"name": "tiny", "since": log["next"]}).json()["points"] == []
    assert c.get("/api/picture", params={"name": "tiny", "file": "final.png"}).content[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", ["../tiny", "tiny/..", "/etc", "tiny/../../x", "..", "a\\b", ""])
def test_run_names_resolve_only_inside_the_folder(runs_root, name):
    assert error(client(runs_root).get("/api/run", params={"name": name}), 400)


def test_a_symlink_out_of_the_folder_is_neither_listed_nor_served(runs_root, tmp_path):
    outside = tmp_path / "outside"
    (outside / "samples").mkdir(parents=True)
    (outside / "config.json").write_text("{}")
    (outside / "secret.png").write_bytes(png_bytes())
    link = runs_root / "escape"
    link.symlink_to(outside, target_is_directory=True)
    (runs_root / "tiny" / "samples" / "leak.png").symlink_to(outside / "secret.png")
    try:
        c = client(runs_root)
        assert "escape" not in [r["name"] for r in c.get("/api/runs").json()["runs"]]
        assert "outside the runs folder" in error(c.get("/api/run", params={"name": "escape"}), 400)
        for file in ("leak.png", "../config.json", "/etc/passwd"):
            assert "no picture" in error(c.get("/api/picture", params={"name": "tiny", "file": file}), 404)
    finally:
        link.unlink()
        (runs_root / "tiny" / "samples" / "leak.png").unlink()


@pytest.mark.parametrize("payload, needle", [
    ({"steps": 0}, "num_inference_steps must be >= 1, got 0"),
    ({"steps": 10_000}, "steps must be at most 250"),
    ({"batch": 99}, "batch must lie in 1..16"),
    ({"steps": "five"}, "steps must be a whole number"),
    ({"prompt": "a cat"}, "takes no prompt"),
    ({"class_label": 3}, "takes no class"),
    ({"sampler": "improved"}, "unknown sampler 'improved'"),
    ({"guidance": "nan"}, "guidance must be a finite number"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"seed": -1}, "seed must lie in 0.."),
])
def test_bad_sample_settings_are_refused_with_a_message(runs_root, payload, needle):
    queue = JobQueue(start=False)
    message = error(client(runs_root, queue=queue).post("/api/sample", params={"name": "tiny"}, json=payload), 400)
    assert needle in message
    assert queue.active() == 0


def test_prompts_are_bounded_and_labels_checked_against_the_run(runs_root):
    c = client(runs_root, Limits(max_prompt_chars=10), queue=JobQueue(start=False))
    assert "limit is 10" in error(c.post("/api/sample", params={"name": "text"}, json={"prompt": "x" * 11}), 400)
    assert "class_label must lie in 0..9" in error(c.post("/api/sample", params={"name": "gaussian"},
                                                          json={"class_label": 10}), 400)
    assert "not JSON" in error(c.post("/api/sample", params={"name": "tiny"}, content=b"{"), 400)


def test_one_job_per_client_and_a_bounded_queue(runs_root):
    queue = JobQueue(max_queue=2, start=False)
    a, b, c = (client(runs_root, queue=queue, cookie=k) for k in "abc")
    settings = {"steps": 2, "batch": 1}
    job = a.post("/api/sample", params={"name": "tiny"}, json=settings).json()["job"]
    busy = a.post("/api/sample", params={"name": "tiny"}, json=settings)
    assert "one job per visitor" in error(busy, 409) and busy.json()["job"] == job  # to follow it again
    assert b.post("/api/sample", params={"name": "tiny"}, json=settings).status_code == 200
    assert "queue is full (2 jobs" in error(c.post("/api/sample", params={"name": "tiny"}, json=settings), 429)
    assert "no such job of yours" in error(c.post(f"/api/jobs/{job}/cancel"), 404)
    assert a.post(f"/api/jobs/{job}/cancel").json()["state"] == "cancelled"
    assert c.post("/api/sample", params={"name": "tiny"}, json=settings).status_code == 200  # room again
    assert queue.stats["rejected"] == 2


def test_uploads_are_bounded_in_bytes_and_pixels(runs_root, monkeypatch):
    c = client(runs_root, Limits(max_upload_bytes=2000, max_image_pixels=100 * 100), queue=JobQueue(start=False))
    restore = lambda body: c.post("/api/restore", params={"name": "cold", "t": "3"}, content=body)  # noqa: E731
    assert "limit is 2000 bytes" in error(restore(b"\0" * 3000), 413)
    assert "is 200x200 pixels; the limit is 10000" in error(restore(png_bytes((200, 200), "1")), 413)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow's own bomb check
    assert "too large to decode safely" in error(restore(png_bytes((12, 12))), 413)
    monkeypatch.undo()
    assert "cannot read the upload as an image" in error(restore(b"GIF89a not really"), 400)
    assert "t must lie in 0..5" in error(c.post("/api/restore", params={"name": "cold", "t": "9"}), 400)
    assert "not a cold run" in error(c.post("/api/restore", params={"name": "tiny"}), 400)
    assert restore(png_bytes((40, 30), "RGB")).status_code == 200


def test_a_running_job_stops_at_its_next_step_when_cancelled(runs_root):
    queue, started = JobQueue(), threading.Event()
    steps = []

    def work(job):
        for i in range(10_000):
            job.check_cancelled()
            steps.append(i)
            started.set()
            threading.Event().wait(0.001)

    job = queue.submit("a", work)
    assert started.wait(10)
    queue.cancel(job.id, "a")
    assert job.wait(0, 10) and _end(job) == "cancelled" and len(steps) < 10_000
    queue.close()


def _end(job, timeout=10.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while job.state in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.01)
    return job.state


def test_the_rest_of_undiffuse_works_without_the_serve_extra(tmp_path):
    # `undiffuse serve` without FastAPI / uvicorn: a clear message naming the extra, and the other
    # commands unaffected (the CLI imports no web package at module level).
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('fastapi', 'uvicorn', 'starlette'):\n"
        "            raise ImportError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from undiffuse.cli import main\n"
        "assert main(['samplers']) == 0\n"
        f"sys.exit(main(['serve', '--runs', {str(tmp_path)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 2, result.stderr
    assert "pip install 'undiffuse[serve]'" in result.stderr and "Traceback" not in result.stderr


def test_serve_flags_are_checked(tmp_path, capsys):
    from undiffuse.cli import main

    assert main(["serve", "--runs", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["serve", "--runs", str(tmp_path), "--max-queue", "0"]) == 2
    assert "--max-queue must be >= 1, got 0" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--runs", str(tmp_path), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def events_of(c, job: str) -> list[dict]:
    """Every event of a job, read from its server-sent events to the end."""
    return [json.loads(line[5:]) for line in c.get(f"/api/jobs/{job}/events").text.splitlines()
            if line.startswith("data:")]


def steps_of(c, run: str, settings: dict) -> list[dict]:
    events = events_of(c, c.post("/api/sample", params={"name": run}, json=settings).json()["job"])
    assert events[-1]["type"] == "done", events[-1]
    return [e for e in events if e["type"] == "step"]


def test_a_cold_run_generates_with_its_progress_counted_in_severities(runs_root):
    with client(runs_root) as c:
        steps = steps_of(c, "cold", {"steps": 3, "batch": 2, "class_label": 4, "guidance": 2})
        assert [(e["i"], e["total"]) for e in steps] == [(1, 3), (2, 3), (3, 3)]


def test_job_pictures_download_and_events_stream(runs_root):
    with client(runs_root) as c:
        job = c.post("/api/sample", params={"name": "tiny"}, json={"steps": 3, "batch": 2}).json()["job"]
        events = events_of(c, job)
        assert [e["i"] for e in events if e["type"] == "step"] == [1, 2, 3] and events[-1]["type"] == "done"
        for name in ("grid-0", "trajectory-0"):
            assert c.get(f"/api/jobs/{job}/{name}.png").content[:4] == b"\x89PNG"
        assert "no such picture" in error(c.get(f"/api/jobs/{job}/grid-5.png"), 404)
        # A finished job keeps only its last frame: the kept jobs' memory is their results.
        frames = [e["x_t"] for e in c.app.state.queue.get(job).events if e["type"] == "step"]
        assert frames[:2] == [None, None] and frames[2].startswith("data:image/png")


def test_a_run_that_cannot_load_or_sample_says_why(runs_root, tmp_path):
    import shutil

    broken = runs_root / "broken"
    shutil.copytree(runs_root / "tiny", broken)
    (broken / "config.json").write_text(json.dumps({"process": 1}))
    try:
        with client(runs_root) as c:
            assert "cannot load run 'broken'" in error(c.get("/api/run", params={"name": "broken"}), 400)
            # Refused by the sampler, not the form: the job ends with the pipeline's message.
            job = c.post("/api/sample", params={"name": "text"}, json={"guidance": 2, "steps": 2}).json()["job"]
            last = events_of(c, job)[-1]
            assert last["type"] == "error" and "guidance needs prompts" in last["message"]
    finally:
        shutil.rmtree(broken)


def test_loopback_by_default_and_a_warning_for_any_other_address(runs_root, monkeypatch, capsys):
    import uvicorn

    from undiffuse.cli import main

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: served.append((app, host, port)))
    free = free_port()
    assert main(["serve", "--runs", str(runs_root), "--port", str(free)]) == 0
    app, host, port = served[-1]
    assert (host, port) == ("127.0.0.1", free) and "warning" not in capsys.readouterr().err
    # A loopback server answers loopback Host headers only: a page elsewhere cannot rebind a name to it.
    assert TestClient(app, base_url="http://evil.example").get("/api/runs").status_code == 400
    assert TestClient(app, base_url="http://127.0.0.1:7860").get("/api/runs").status_code == 200
    assert main(["serve", "--runs", str(runs_root), "--host", "0.0.0.0", "--port", str(free)]) == 0
    assert served[-1][1:] == ("0.0.0.0", free)
    assert "warning: serving on 0.0.0.0: anyone who can reach this address" in capsys.readouterr().err


def test_malformed_queries_and_point_runs_get_a_message(runs_root):
    from types import SimpleNamespace

    from undiffuse.serve.limits import BadInput, sample_request

    c = client(runs_root)
    assert "since: Input should be a valid integer" in error(c.get("/api/log", params={"name": "tiny",
                                                                                       "since": "x"}), 400)
    points = SimpleNamespace(shape=(2,), can_generate=True)
    with pytest.raises(BadInput, match="draws 2-D points, not images"):
        sample_request({}, points, ["ddim"], [], Limits())


def test_frames_nobody_reads_are_dropped_beyond_the_newest_jobs():
    # Frames are kept for the page to read; a job whose page never came keeps them only while it is
    # among the newest max_queue finished jobs, so unread jobs cannot pile frames up.
    queue = JobQueue(max_queue=1)

    def work(job):
        for i in (1, 2):
            job.emit({"type": "step", "panel": 0, "i": i, "x_t": f"frame {i}", "x0": f"frame {i}"})

    first = queue.submit("a", work)
    assert _end(first) == "done"
    assert [e["x_t"] for e in first.events if e["type"] == "step"] == ["frame 1", "frame 2"]
    second = queue.submit("a", work)
    assert _end(second) == "done"
    assert [e["x_t"] for e in first.events if e["type"] == "step"] == [None, "frame 2"]
    assert [e["x_t"] for e in second.events if e["type"] == "step"] == ["frame 1", "frame 2"]
    queue.close()


def test_a_latent_run_is_listed_and_its_steps_are_decoded_images(tmp_path, latent_run):
    import shutil

    shutil.copytree(latent_run, tmp_path / "latent")
    with client(tmp_path) as c:
        listed = {r["name"]: r for r in c.get("/api/runs").json()["runs"]}
        assert "latent" in listed["latent"]["kind"]
        steps = steps_of(c, "latent", {"steps": 2, "batch": 2, "class_label": 1})
        assert [e["i"] for e in steps] == [1, 2]
        # The frames are decoded: grey PNGs of the 1-channel digits, not RGB ones of the 3-channel latents.
        frame = steps[-1]["x0"].split(",", 1)[1]
        import base64

        grid = Image.open(io.BytesIO(base64.b64decode(frame)))
        assert grid.mode == "L"


def test_the_page_preselects_the_clis_precision_for_each_run(runs_root, monkeypatch):
    from undiffuse import compiling

    for native in (True, False):
        monkeypatch.setattr(compiling, "native_bf16", lambda device, native=native: native)
        with client(runs_root) as c:
            got = {name: c.get("/api/run", params={"name": name}).json()["precision"]
                   for name in ("tiny", "gaussian", "cold", "text")}
        gaussian = "bf16" if native else "float32"  # bf16 only where measured, and native
        assert got == {"tiny": gaussian, "gaussian": gaussian, "cold": "float32", "text": gaussian}
