"""What a running job tells its row: stages, byte counts and, at the end, completion.

Handlers (the ingest pipeline) see this only through the ``Reporter`` protocol they declare
(``ingest/staging.py``); they never touch the job store. Each stage that ends is also told to the
``on_stage_end`` callback the worker was given (the metrics' stage durations).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from modelport.jobs.store import JobStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageTimed:
    """A stage of a job that ended: how long it ran, and whether the job went on past it (``ok``) or
    ended in it (failed, or lost to another worker)."""

    stage: str
    seconds: float
    ok: bool


StageObserver = Callable[[StageTimed], None]


def ignore_stage(_: StageTimed) -> None:
    pass


class JobProgress:
    """Reports stages and byte counts to the job row, at most every ``interval`` seconds for bytes."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        worker_id: str,
        *,
        interval: float = 0.5,
        stage_delay_s: float = 0.0,
        on_stage_end: StageObserver = ignore_stage,
    ) -> None:
        self.store, self.job_id, self.worker_id, self.interval = store, job_id, worker_id, interval
        self.stage_delay_s, self.on_stage_end = stage_delay_s, on_stage_end
        self.current = "running"
        self._stage: str | None = None  # the stage being timed; a repeated stage() with new words goes on
        self._stage_began = 0.0
        self._last = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def stage(self, status: str, message: str) -> None:
        if status != self._stage:
            self._end_stage(ok=True)
            self._stage, self._stage_began = status, time.monotonic()
        self.current = status
        self._started = time.monotonic()
        self.store.stage(self.job_id, self.worker_id, status, message)
        if self.stage_delay_s:
            time.sleep(self.stage_delay_s)

    def bytes(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        with self._lock:  # zip members are extracted on several threads
            if now - self._last < self.interval and done != total:
                return
            self._last = now
        elapsed = max(now - self._started, 1e-6)
        rate = done / elapsed
        eta = (total - done) / rate if total and rate > 0 else None
        self.store.heartbeat(
            self.job_id,
            self.worker_id,
            {
                "stage": self.current,
                "bytes_done": done,
                "bytes_total": total,
                "bytes_per_second": round(rate),
                "eta_seconds": None if eta is None else round(eta, 1),
            },
        )

    def complete(self, s: Session, message: str) -> None:
        self.store.complete(s, self.job_id, self.worker_id, message)

    def finish(self, ok: bool) -> None:
        """The job's run is over (the worker calls this once): its open stage ends with it."""
        self._end_stage(ok)

    def _end_stage(self, ok: bool) -> None:
        if self._stage is None:
            return
        timed = StageTimed(self._stage, time.monotonic() - self._stage_began, ok)
        self._stage = None
        try:
            self.on_stage_end(timed)
        except Exception:  # an observer never fails the job it watches
            log.exception("job %s: the stage observer failed; continuing", self.job_id)
