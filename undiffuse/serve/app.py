"""The web page's server: a FastAPI app over a folder of run directories (``undiffuse serve``).

    GET  /                       the page (static/index.html, app.js, style.css: no CDN, no build)
    GET  /api/runs               the runs under the folder
    GET  /api/run?name=R         one run: config, kind, capabilities, samplers, limits, precision
    GET  /api/log?name=R&since=B the loss points from byte B of log.jsonl on (the page polls it)
    GET  /api/picture?name=R&file=F   a PNG of R/samples/
    POST /api/sample?name=R      JSON settings (and "compare": settings of a second panel) -> a job
    POST /api/restore?name=R&t=&steps=&seed=   body: an image (or empty: the built-in one) -> a job
    GET  /api/jobs/ID/events     the job's progress as server-sent events
    POST /api/jobs/ID/cancel     cancel your job
    GET  /api/jobs/ID/FILE.png   a finished job's grid, trajectory or restoration strip

Every refusal is JSON {"error": message} with a 4xx status; an unexpected failure is a 500 with a
note, never a traceback. A visitor is told apart by a cookie the page sets (one job at a time each).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware

from .jobs import TERMINAL, JobQueue
from .limits import (BadInput, Limits, as_run_image, built_in_image, decode_upload, default_precision, integer,
                     sample_request)
from .runs import Runs, capabilities
from .work import restore_job, sample_job

STATIC = Path(__file__).parent / "static"
COOKIE = "undiffuse_client"
log = logging.getLogger("undiffuse.serve")


def create_app(runs_dir: str | Path, limits: Limits | None = None, *, queue: JobQueue | None = None,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app serving the runs under ``runs_dir``; ``queue``: a JobQueue of one's own (tests);
    ``allowed_hosts``: Host headers accepted (a loopback server accepts only loopback names, so a
    web page elsewhere cannot reach it through DNS rebinding)."""
    limits = limits or Limits()
    runs = Runs(runs_dir)
    queue = queue or JobQueue(limits.max_queue, limits.keep_finished)
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        queue.close()  # waiting jobs end as cancelled; the running one ends with the process

    app = FastAPI(title="undiffuse", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.runs, app.state.queue, app.state.limits = runs, queue, limits
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    _errors(app)
    _pages(app)
    _run_routes(app, runs, limits)
    _job_routes(app, runs, queue, limits)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(BadInput)
    async def bad_input(request: Request, e: BadInput):
        return JSONResponse({"error": str(e), **e.extra}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(part) for part in err.get('loc', ())[1:]) or 'request'}: "
                             f"{err.get('msg', 'invalid')}" for err in e.errors())
        return JSONResponse({"error": f"bad request ({problems})"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(request: Request, e: Exception):
        log.exception("request %s failed", request.url.path)
        return JSONResponse({"error": "internal error (the server log has the details)"}, status_code=500)


def client_of(request: Request) -> str:
    return request.cookies.get(COOKIE) or f"host:{request.client.host if request.client else '?'}"


def _pages(app: FastAPI) -> None:
    @app.get("/")
    def index(request: Request):
        response = FileResponse(STATIC / "index.html", media_type="text/html")
        if not request.cookies.get(COOKIE):
            response.set_cookie(COOKIE, secrets.token_urlsafe(16), httponly=True, samesite="strict")
        return response

    @app.get("/static/{file}")
    def static(file: str):
        names = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        if file not in names:
            raise BadInput(f"no static file {file!r}", 404)
        return FileResponse(names[file])


def _run_routes(app: FastAPI, runs: Runs, limits: Limits) -> None:
    @app.get("/api/runs")
    def list_runs():
        items = []
        for name in runs.names():
            try:
                s = runs.summary(name)
                items.append({k: s[k] for k in ("name", "kind", "has_checkpoint")})
            except BadInput as e:
                items.append({"name": name, "kind": "?", "problem": str(e)})
        return {"root": str(runs.root), "runs": items}

    @app.get("/api/run")
    def run(name: str = ""):
        summary = runs.summary(name)
        summary["limits"] = limits.to_dict()
        if not summary["has_checkpoint"]:
            summary["capabilities"] = None
            return summary
        pipe = runs.pipeline(name)
        summary["capabilities"] = capabilities(pipe)
        summary["precision"] = default_precision(summary["config"])
        summary["samplers"], summary["spacings"] = _samplers(pipe)
        if pipe.can_restore:
            summary["max_severity"] = pipe.degradation.num_steps
        return summary

    @app.get("/api/log")
    def loss_log(name: str = "", since: int = 0):
        return runs.log(name, since)

    @app.get("/api/picture")
    def picture(name: str = "", file: str = ""):
        return FileResponse(runs.picture(name, file), media_type="image/png")


def _samplers(pipe) -> tuple[list[str], list[str]]:
    """The samplers and spacings a run takes (cold: its own samplers, no spacing)."""
    if pipe.can_restore:
        from ..cold.samplers import COLD_SAMPLERS

        return list(COLD_SAMPLERS), []
    from ..samplers import SAMPLERS
    from ..samplers.timesteps import SPACINGS

    return list(SAMPLERS), list(SPACINGS)


async def _json_body(request: Request, limit: int) -> dict:
    body = await _read_body(request, limit)
    try:
        payload = json.loads(body or b"{}")
    except ValueError:
        raise BadInput("the request body is not JSON") from None
    if not isinstance(payload, dict):
        raise BadInput("the request must be a JSON object of settings")
    return payload


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes ``limit`` bytes, whatever Content-Length says."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BadInput(f"the upload is {declared} bytes; the limit is {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadInput(f"the upload is over {limit} bytes, the limit", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def _job_routes(app: FastAPI, runs: Runs, queue: JobQueue, limits: Limits) -> None:
    @app.post("/api/sample")
    async def sample(request: Request, name: str = ""):
        payload = await _json_body(request, 64 * 1024)
        pipe = await asyncio.to_thread(runs.pipeline, name)
        samplers, spacings = _samplers(pipe)
        draws = [sample_request(payload, pipe, samplers, spacings, limits)]
        if payload.get("compare"):
            other = payload["compare"]
            if not isinstance(other, dict):
                raise BadInput("compare must be an object of the settings that differ")
            draws.append(sample_request({**payload, **other}, pipe, samplers, spacings, limits))
        job = queue.submit(client_of(request), sample_job(pipe, draws), "sample")
        return {"job": job.id}

    @app.post("/api/restore")
    async def restore(request: Request, name: str = "", t: str = "", steps: str = "", seed: str = "0"):
        pipe = await asyncio.to_thread(runs.pipeline, name)
        if not pipe.can_restore:
            raise BadInput("this run does not restore (it is not a cold run); use Sample")
        args = {"t": t, "steps": steps, "seed": seed}
        big = pipe.degradation.num_steps
        severity = integer(args, "t", big, 0, big, f" (T of {pipe.degradation.name})")
        count = integer(args, "steps", None, 1, limits.max_steps)
        body = await _read_body(request, limits.max_upload_bytes)
        image = as_run_image(decode_upload(body, limits), pipe.shape) if body else built_in_image(pipe.shape)
        work = restore_job(pipe, image, severity, count, integer(args, "seed", 0, 0, 2**63 - 1))
        job = queue.submit(client_of(request), work, "restore")
        return {"job": job.id}

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel(job_id: str, request: Request):
        job = queue.cancel(job_id, client_of(request))
        return {"job": job.id, "state": job.state}

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str):
        job = queue.get(job_id)
        if job is None:
            raise BadInput("no such job (it may have finished long ago)", 404)
        return StreamingResponse(_stream(job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/{file}.png")
    def result(job_id: str, file: str):
        job = queue.get(job_id)
        if job is None or file not in job.results:
            raise BadInput("no such picture: the job has not finished, or finished long ago", 404)
        return Response(job.results[file], media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{file}.png"'})


async def _stream(job, poll: float = 0.03, keep_alive: float = 15.0):
    """The job's events as server-sent events, until its last one. Polled on the event loop (a
    waiting thread per open page would exhaust the thread pool under load)."""
    sent, quiet = 0, 0.0
    while True:
        fresh = job.events[sent:]  # appended to, or replaced by one as long: a slice is consistent
        for event in fresh:
            yield f"data: {json.dumps(event)}\n\n"
        sent += len(fresh)
        if fresh and fresh[-1]["type"] in TERMINAL:
            job.forget_frames()  # read to the end: the frames have served their purpose
            return
        quiet = 0.0 if fresh else quiet + poll
        if quiet >= keep_alive:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(poll)
