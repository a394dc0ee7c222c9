"""What a running job tells its row: stages, byte counts and, at the end, completion.

Handlers (the ingest pipeline) see this only through the ``Reporter`` protocol they declare
(``ingest/staging.py``); they never touch the job store.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy.orm import Session

from modelport.jobs.store import JobStore


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
    ) -> None:
        self.store, self.job_id, self.worker_id, self.interval = store, job_id, worker_id, interval
        self.stage_delay_s = stage_delay_s
        self.current = "running"
        self._last = 0.0
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def stage(self, status: str, message: str) -> None:
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
