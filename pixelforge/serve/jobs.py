"""A bounded job queue served by worker threads: requests only enqueue, workers compute.

PyTorch releases the GIL inside its kernels, so a worker thread sampling never stalls the server's
event loop. A job's work is a function `work(progress)`; `progress(done, total)` records progress and
is where a cancelled or timed-out job stops (it raises), since a thread cannot be interrupted from
outside: a running job stops at its next sampler step.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable


class QueueFull(Exception):
    """The queue holds max_queue jobs already; retry_after is a guess in seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"the job queue is full; retry in about {retry_after} s")
        self.retry_after = retry_after


class JobStopped(Exception):
    """Raised from the progress callback to stop a running job (cancelled or over its time limit)."""


@dataclass
class Job:
    id: str
    model: str
    n: int
    work: Callable[[Callable[[float, float], None]], Any] | None  # None once the job is final
    timeout_s: float | None
    status: str = "queued"  # queued -> running -> done | failed | cancelled
    progress: float = 0.0
    error: str | None = None
    result: Any = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    cancel_requested: bool = False
    version: int = 0  # bumped on every change, so watchers know when to report

    @property
    def is_final(self) -> bool:
        return self.status in ("done", "failed", "cancelled")


class JobQueue:
    """Up to max_queue waiting jobs, `workers` threads running them, the newest `keep` finished jobs kept."""

    def __init__(self, *, workers: int = 1, max_queue: int = 16, keep: int = 100, timeout_s: float | None = 300.0):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.workers = workers
        self.max_queue = max_queue
        self.keep = keep
        self.timeout_s = timeout_s
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._durations: collections.deque[float] = collections.deque(maxlen=20)

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, name=f"pixelforge-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every job still waiting or running and let the workers finish."""
        with self._lock:
            for job in self._jobs.values():
                if not job.is_final:
                    job.cancel_requested = True
                if job.status == "queued":
                    self._finish(job, "cancelled", "the server is shutting down")
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout)
        self._threads.clear()

    # --- requests ----------------------------------------------------------------------------------
    def submit(self, model: str, n: int, work: Callable) -> Job:
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
            if waiting >= self.max_queue:
                raise QueueFull(self._retry_after(waiting))
            job = Job(id=uuid.uuid4().hex, model=model, n=n, work=work, timeout_s=self.timeout_s)
            self._jobs[job.id] = job
            self._evict()
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job now, a running one at its next progress report; finished jobs are left as they are."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.is_final:
                return job
            job.cancel_requested = True
            if job.status == "queued":
                self._finish(job, "cancelled", "cancelled before it started")
            return job

    def queue_position(self, job: Job) -> int | None:
        """How many queued jobs are ahead of this one (None unless it is queued)."""
        with self._lock:
            if job.status != "queued":
                return None
            ahead = 0
            for j in self._jobs.values():
                if j is job:
                    return ahead
                ahead += j.status == "queued"
        return None

    def counts(self) -> dict[str, int]:
        with self._lock:
            statuses = [j.status for j in self._jobs.values()]
        return {"queued": statuses.count("queued"), "running": statuses.count("running")}

    # --- internals ---------------------------------------------------------------------------------
    def _retry_after(self, waiting: int) -> int:
        """Seconds until a queue slot frees, which is when a worker takes the next waiting job: the soonest
        a running job ends. A job's time left comes from its own progress rate (before its first report:
        the mean time of recent jobs), and never passes its time limit. With no worker busy (not started),
        the waiting jobs at the mean recent time, per worker. Called under the lock."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 5.0
        now = time.time()
        left = []
        for job in self._jobs.values():
            if job.status != "running" or job.started is None:
                continue
            elapsed = max(0.0, now - job.started)
            t = elapsed * (1.0 - job.progress) / job.progress if job.progress > 0 else max(0.0, mean - elapsed)
            if job.timeout_s is not None:
                t = min(t, max(0.0, job.timeout_s - elapsed))
            left.append(t)
        if not left:
            return max(1, math.ceil(mean * max(1, waiting) / self.workers))
        return max(1, math.ceil(min(left) if len(left) >= self.workers else 0.0))

    def _evict(self) -> None:
        """Drop the oldest finished jobs (and their images) beyond `keep`; waiting and running jobs stay."""
        finished = [j.id for j in self._jobs.values() if j.is_final]
        for job_id in finished[: max(0, len(finished) - self.keep)]:
            del self._jobs[job_id]

    def _finish(self, job: Job, status: str, error: str | None = None, result: Any = None) -> None:
        # the status last: readers outside the lock must never see "done" without its result
        job.error, job.result, job.finished = error, result, time.time()
        job.work = None  # what the work held (an uploaded image, say) is not kept with the finished job
        if status == "done":
            job.progress = 1.0
        job.status = status
        job.version += 1

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.status != "queued":  # cancelled while waiting
                    continue
                job.status, job.started = "running", time.time()
                job.version += 1
            deadline = None if job.timeout_s is None else time.monotonic() + job.timeout_s

            def progress(done: float, total: float, _job=job, _deadline=deadline) -> None:
                if _job.cancel_requested:
                    raise JobStopped("cancelled")
                if _deadline is not None and time.monotonic() > _deadline:
                    raise JobStopped(f"timed out after {_job.timeout_s:g} s")
                with self._lock:
                    _job.progress = min(1.0, max(0.0, done / total)) if total else 0.0
                    _job.version += 1

            t0 = time.monotonic()
            try:
                result = job.work(progress)
            except JobStopped as e:
                with self._lock:
                    self._finish(job, "cancelled" if job.cancel_requested else "failed", str(e))
                    self._durations.append(time.monotonic() - t0)  # the time it held a worker: Retry-After reads it
            except Exception as e:  # a job's failure is reported on the job, never kills the worker
                with self._lock:
                    self._finish(job, "failed", f"{type(e).__name__}: {e}")
                    self._durations.append(time.monotonic() - t0)
            else:
                with self._lock:
                    self._finish(job, "done", result=result)
                    self._durations.append(time.monotonic() - t0)
