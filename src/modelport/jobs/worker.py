"""Workers: claim Queued jobs and run them; take back jobs whose worker died.

``modelport serve`` runs ``settings.workers`` of these as threads; ``modelport worker`` runs them in
a process of its own. Any number of either can share one database and blob store.

A worker knows jobs, not what they do: the composition root (``services.py``) hands it one handler
per job type (the ingest pipeline's ``run``) and the periodic housekeeping to run when idle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from modelport.errors import IngestError, ModelportError
from modelport.jobs.progress import JobProgress, StageObserver, ignore_stage
from modelport.jobs.store import JobLost, JobStore
from modelport.redact import scrub
from modelport.settings import Settings
from modelport.storage.db.engine import is_database_down

log = logging.getLogger(__name__)
GC_INTERVAL_S = 3600.0

# Runs one claimed job to its end: returns once it is Complete, raises ``IngestError`` (or any other
# error) for the worker to record. ``JobProgress`` is how it reports.
JobHandler = Callable[[str, JobProgress], None]


class Worker:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        handlers: Mapping[str, JobHandler],
        name: str,
        housekeeping: Callable[[], object] = lambda: None,
        on_stage_end: StageObserver = ignore_stage,
    ) -> None:
        self.settings, self.store, self.handlers, self.housekeeping = settings, store, handlers, housekeeping
        self.on_stage_end = on_stage_end  # each finished stage of a job, with its duration (the metrics)
        self.id = f"{socket.gethostname()}:{os.getpid()}:{name}"

    def run_once(self) -> bool:
        """Reap stale jobs, then claim and run one. Returns whether a job ran."""
        self.store.reap_stale(timedelta(seconds=self.settings.job_lease_s), self.settings.job_max_attempts)
        claimed = self.store.claim(self.id, self.settings.running_jobs_per_account)
        if claimed is None:
            return False
        log.info("worker %s: running job %s (attempt %d)", self.id, claimed.job_id, claimed.attempt)
        with _Heartbeat(self.store, claimed.job_id, self.id, self.settings.job_lease_s / 4):
            self._run(claimed.job_id, claimed.type)
        return True

    def _run(self, job_id: str, job_type: str) -> None:
        progress = JobProgress(
            self.store, job_id, self.id, stage_delay_s=self.settings.stage_delay_s, on_stage_end=self.on_stage_end
        )
        completed = False
        try:
            handler = self.handlers.get(job_type)
            if handler is None:
                raise IngestError(f"this worker cannot run {job_type!r} jobs")
            handler(job_id, progress)
            completed = True
        except JobLost:
            log.warning("job %s: lost ownership; stopping without touching it", job_id)
        except IngestError as e:
            log.info("job %s failed: %s", job_id, e.code)
            with contextlib.suppress(JobLost):
                self.store.finish_failed(job_id, self.id, e.code, e.message, e.problems)
        except Exception as e:  # a bug or an outage: the job must still end, and say why
            self._fail_unexpected(job_id, e)
        finally:
            progress.finish(ok=completed)

    def _fail_unexpected(self, job_id: str, error: Exception) -> None:
        if is_database_down(error):
            # Transient: put the job back now if the database answers again, else its lease runs out
            # and the reaper does (the heartbeat stopped with this attempt).
            log.warning("job %s: the database connection was lost (%s); re-queueing", job_id, type(error).__name__)
            with contextlib.suppress(Exception):
                self.store.requeue(job_id, self.id, "the database connection was lost", self.settings.job_max_attempts)
            return
        log.exception("job %s: unexpected error", job_id)
        if isinstance(error, ModelportError):
            code, message = error.code, scrub(error.message)
        else:
            code, message = "internal_error", f"internal error ({type(error).__name__}); see the server log"
        with contextlib.suppress(JobLost):
            self.store.finish_failed(job_id, self.id, code, message, [])

    def run_forever(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Run jobs until ``stop``; ``wake`` cuts the idle wait short when a job is submitted here."""
        wake = wake or threading.Event()
        next_gc = 0.0
        while not stop.is_set():
            try:
                if stop.wait(0) or self.run_once():
                    continue
                if (now := time.monotonic()) >= next_gc:
                    self.housekeeping()
                    next_gc = now + GC_INTERVAL_S
            except Exception:
                log.exception("worker %s: loop error; retrying", self.id)
            if wake.wait(self.settings.job_poll_interval_s):
                wake.clear()


class _Heartbeat:
    """Keeps the job's lease alive while a long, silent step (hashing, validating) runs."""

    def __init__(self, store: JobStore, job_id: str, worker_id: str, interval: float) -> None:
        self.store, self.job_id, self.worker_id, self.interval = store, job_id, worker_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.store.heartbeat(self.job_id, self.worker_id)
            except JobLost:
                return
            except Exception:
                log.warning("job %s: heartbeat failed; will retry", self.job_id, exc_info=True)


class WorkerPool:
    """Worker threads in this process. ``wake`` is set by whoever queues a job here (the catalog), so
    the workers look now rather than at their next poll."""

    def __init__(
        self,
        workers: list[Worker],
        wake: threading.Event,
        warm_up: Callable[[], object] = lambda: None,
    ) -> None:
        self.workers, self._wake, self.warm_up = workers, wake, warm_up
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self.workers:
            threading.Thread(target=self.warm_up, name="job-warm-up", daemon=True).start()
        for w in self.workers:
            t = threading.Thread(target=w.run_forever, args=(self._stop, self._wake), name=w.id, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
