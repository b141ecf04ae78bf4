"""The server's work queue: one worker thread draws samples, one job at a time, in arrival order.

A job is a function of the ``Job`` that runs it: it reports progress with ``job.emit`` (the page
reads the events over server-sent events) and stops early when ``job.check_cancelled`` raises.
``JobQueue.submit`` refuses a client that already has a job waiting or running, and any job beyond
``max_queue`` waiting or running server-wide, each with a message the page shows.
"""
from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from typing import Callable

from .limits import BadInput

log = logging.getLogger("undiffuse.serve")

ACTIVE, TERMINAL = ("queued", "running"), ("done", "error", "cancelled")


class Cancelled(Exception):
    """Raised inside a job's sampler callback when its client pressed Cancel."""


class Job:
    """One request's work, its events (appended, never changed) and its downloadable results."""

    def __init__(self, client: str, work: Callable[[Job], None], what: str = "sample"):
        self.id = secrets.token_urlsafe(12)
        self.client, self.work, self.what = client, work, what
        self.state = "queued"
        self.events: list[dict] = []
        self.results: dict[str, bytes] = {}
        self._cancel = threading.Event()
        self._changed = threading.Condition()
        self._frames_forgotten = False

    def emit(self, event: dict) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    def wait(self, start: int, timeout: float) -> list[dict]:
        """The events from index ``start`` on, waiting up to ``timeout`` s for one when there is none."""
        with self._changed:
            if len(self.events) <= start:
                self._changed.wait(timeout)
            return self.events[start:]

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise Cancelled

    def finish(self, state: str, **event) -> None:
        self.state = state
        self.emit({"type": state, **event})

    def forget_frames(self) -> None:
        """Keep the pictures of the last step only (per panel), once the job is finished and its page
        has read them (or it is no longer among the newest): kept jobs cost their results, not
        hundreds of frames. A page that connects later still sees the results."""
        with self._changed:
            if self.state not in TERMINAL or self._frames_forgotten:
                return
            self._frames_forgotten = True
            last = {e.get("panel"): i for i, e in enumerate(self.events) if e["type"] == "step"}
            self.events = [({**e, "x_t": None, "x0": None} if e["type"] == "step" and last[e.get("panel")] != i
                            and "x_t" in e else e) for i, e in enumerate(self.events)]


class JobQueue:
    """Jobs in arrival order, run by one worker thread (``start=False``: none, for tests of the
    limits). Finished jobs are kept (newest ``keep_finished``) so their pictures can be downloaded."""

    def __init__(self, max_queue: int = 8, keep_finished: int = 32, *, start: bool = True):
        self.max_queue, self.keep_finished = max_queue, keep_finished
        self._lock = threading.Lock()
        self._waiting: collections.deque[Job] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._wake = threading.Condition(self._lock)
        self._stop = False
        self.stats = {"served": 0, "rejected": 0, "cancelled": 0, "failed": 0}
        self._worker = threading.Thread(target=self._run, name="undiffuse-serve-worker", daemon=True)
        if start:
            self._worker.start()

    def submit(self, client: str, work: Callable[[Job], None], what: str = "sample") -> Job:
        """Queue ``work`` for ``client``; BadInput (409 / 429) when the client or the queue is busy."""
        with self._lock:
            active = [j for j in self._jobs.values() if j.state in ACTIVE]
            mine = [j for j in active if j.client == client]
            if mine:  # its id lets a reloaded page follow (and cancel) the job it lost track of
                self.stats["rejected"] += 1
                raise BadInput("you already have a job waiting or running: wait for it to finish or cancel "
                               "it (one job per visitor at a time)", 409, job=mine[0].id)
            if len(active) >= self.max_queue:
                self.stats["rejected"] += 1
                raise BadInput(f"the server is busy: its queue is full ({self.max_queue} jobs waiting or "
                               "running, the most it takes); try again in a moment", 429)
            job = Job(client, work, what)
            self._jobs[job.id] = job
            self._waiting.append(job)
            job.emit({"type": "queued", "position": len(self._waiting)})
            self._forget_old()
            self._wake.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str, client: str) -> Job:
        """Cancel a client's own job: a waiting job ends at once, a running one at its next step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.client != client:
                raise BadInput("no such job of yours (it may have finished long ago)", 404)
            job.cancel()
            if job.state == "queued":
                self._waiting.remove(job)
                self._end(job, "cancelled")
            return job

    def active(self) -> int:
        with self._lock:
            return sum(j.state in ACTIVE for j in self._jobs.values())

    def close(self) -> None:
        with self._lock:
            self._stop = True
            for job in self._waiting:
                job.cancel()
                self._end(job, "cancelled")
            self._waiting.clear()
            self._wake.notify_all()

    # --- the worker -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._stop:
                    self._wake.wait()
                if self._stop:
                    return
                job = self._waiting.popleft()
                job.state = "running"
                for i, other in enumerate(self._waiting):
                    other.emit({"type": "queued", "position": i + 1})
            self._execute(job)

    def _execute(self, job: Job) -> None:
        t0 = time.perf_counter()
        job.emit({"type": "started"})
        try:
            job.work(job)
            state, extra = "done", {}
        except Cancelled:
            state, extra = "cancelled", {}
        except (BadInput, ValueError, FileNotFoundError) as e:
            state, extra = "error", {"message": str(e)}
        except Exception:  # a bug, not the visitor's input: the log has the traceback, the page a note
            log.exception("job %s failed", job.id)
            state, extra = "error", {"message": "internal error while running the job (the server log has "
                                                "the details)"}
        with self._lock:
            self._end(job, state, seconds=round(time.perf_counter() - t0, 3), **extra)

    def _end(self, job: Job, state: str, **event) -> None:
        key = {"done": "served", "cancelled": "cancelled", "error": "failed"}[state]
        self.stats[key] += 1
        job.finish(state, **event)
        # Frames a page never came to read: only the newest few finished jobs keep theirs.
        finished = [j for j in self._jobs.values() if j.state in TERMINAL]
        for old in finished[:-self.max_queue]:
            old.forget_frames()

    def _forget_old(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.state in TERMINAL]
        for key in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[key]
