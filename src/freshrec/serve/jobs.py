"""Background jobs with visible progress (embedding a large batch of items)."""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cachetools import FIFOCache

from freshrec.runtime import in_background

log = logging.getLogger(__name__)


@dataclass
class Job:
    job_id: str
    what: str
    total: int = 0
    done: int = 0
    state: str = "running"
    error: str | None = None
    started: float = field(default_factory=time.time)
    finished: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Jobs:
    """One worker thread runs jobs in order; the last ``keep`` jobs stay visible."""

    def __init__(self, keep: int = 100):
        self.keep = keep
        self.jobs: FIFOCache[str, Job] = FIFOCache(maxsize=keep)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()

    def start(self, what: str, work: Callable[[Job], None]) -> Job:
        with self._lock:
            job = Job(f"job-{next(self._ids)}", what)
            self.jobs[job.job_id] = job
        threading.Thread(target=self._run, args=(job, work), name=job.job_id, daemon=True).start()
        return job

    def _run(self, job: Job, work: Callable[[Job], None]) -> None:
        in_background()
        with self._run_lock:
            try:
                work(job)
                job.state = "done"
            except Exception as exc:  # the job reports it; the server goes on
                log.exception("%s failed", job.job_id)
                job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            job.finished = time.time()

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)
