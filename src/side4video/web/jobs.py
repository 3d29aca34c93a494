"""Background jobs of the web app: run one at a time on a worker thread, polled by the page for progress.

A request that starts something slow (indexing a folder, searching, classifying) gets a job id at once;
the page then asks ``/api/jobs/<id>`` for the state, the progress and finally the result or the error.
One worker thread runs the jobs in order, so a model is never used by two jobs at once, and the server's
event loop never waits for one.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

JobState = Literal["queued", "running", "done", "error"]


@dataclass
class Job:
    """One background operation; its fields are written by the worker and read by the polling requests."""

    kind: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = "queued"
    message: str = "waiting for the previous job"
    done: int = 0  # progress: ``done`` of ``total`` units (0 of 0: no count to show)
    total: int = 0
    result: Any = None
    error: str | None = None
    images: dict[str, bytes] = field(default_factory=dict)  # JPEGs the result refers to, by name

    def progress(self, message: str, done: int = 0, total: int = 0) -> None:
        self.message, self.done, self.total = message, done, total

    def add_image(self, name: str, jpeg: bytes) -> str:
        """Keep ``jpeg`` with the job; returns the URL the page loads it from."""
        self.images[name] = jpeg
        return f"/api/jobs/{self.id}/images/{name}.jpg"

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "state": self.state, "message": self.message, "done": self.done,
                "total": self.total, "result": self.result, "error": self.error}


class JobQueue:
    """Runs submitted jobs in order on one worker thread; remembers the last ``keep`` of them."""

    def __init__(self, keep: int = 64) -> None:
        self.keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="side4video-job")

    def submit(self, kind: str, fn: Callable[[Job], Any], cleanup: Callable[[], None] | None = None) -> Job:
        """Queue ``fn(job)``; its return value becomes the job's result, an exception its error message.
        ``cleanup`` runs after ``fn`` whatever happened."""
        job = Job(kind)
        with self._lock:
            self._jobs[job.id] = job
            while len(self._jobs) > self.keep:
                self._jobs.popitem(last=False)
        self._pool.submit(self._run, job, fn, cleanup)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _run(job: Job, fn: Callable[[Job], Any], cleanup: Callable[[], None] | None) -> None:
        job.state = "running"
        job.progress("started")
        try:
            job.result = fn(job)
            job.state = "done"
            job.progress("done", job.done, job.total)
        except Exception as e:  # a job's failure is reported to the page, never raised into the server
            if not isinstance(e, (ValueError, OSError)):
                log.exception("%s job failed", job.kind)
            job.error = str(e) or type(e).__name__
            job.state = "error"
        finally:
            if cleanup is not None:
                cleanup()
