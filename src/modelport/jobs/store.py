"""Job rows and their transitions. Every write checks the job is still owned by the caller.

A worker claims a Queued job (row lock on PostgreSQL, an atomic conditional UPDATE everywhere),
keeps a heartbeat while it runs, and ends it Complete or Failed. A Running job whose heartbeat is
older than the lease is taken back by any worker: re-queued while it has attempts left, else failed.

Workers are shared by every account, so a claim is fair between accounts: with a cap on running
jobs per account (``Settings.running_jobs_per_account``), a job whose account already runs that many
stays Queued, and among the rest the accounts running the fewest jobs go first, oldest job first.
One account's slow or numerous jobs cannot take every worker while another account waits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session, aliased

from modelport.jobs.states import JobStatus, ModelStatus, RevisionStatus
from modelport.storage.db.engine import Database, scrub_after_commit
from modelport.storage.db.tables import Account, Job, JobSecret, JobStatusUpdate, Model, ModelRevision, utcnow

log = logging.getLogger(__name__)


class JobLost(Exception):
    """This worker no longer owns the job (its lease expired and someone else took it)."""


@dataclass(frozen=True)
class Claimed:
    job_id: str
    attempt: int
    type: str  # a ``JobType``: which handler runs it


def add_update(s: Session, job_id: str, status: str, message: str) -> None:
    s.add(JobStatusUpdate(job_id=job_id, status=status, message=message))


def _next_candidate(running_cap: int, full: set[str]) -> Select[str, str]:
    """The oldest Queued job (of the accounts running the fewest, under ``running_cap``), row-locked."""
    query = select(Job.id, Job.account_id).where(Job.status == JobStatus.QUEUED)
    if running_cap:
        other = aliased(Job)
        running = (
            select(func.count())
            .where(other.account_id == Job.account_id, other.status == JobStatus.RUNNING)
            .correlate(Job)
            .scalar_subquery()
        )
        query = query.where(running < running_cap).order_by(running)
        if full:
            query = query.where(Job.account_id.not_in(full))
    return query.order_by(Job.created_at).limit(1).with_for_update(skip_locked=True, of=Job)


def _running_once_locked(s: Session, account_id: str) -> int:
    """The account's Running jobs, counted after taking its row lock (which serialises its claims)."""
    s.execute(select(Account.id).where(Account.id == account_id).with_for_update())
    running = select(func.count()).where(Job.account_id == account_id, Job.status == JobStatus.RUNNING)
    return int(s.scalar(running) or 0)


class JobStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def claim(self, worker_id: str, running_cap: int = 0) -> Claimed | None:
        """Start the next Queued job, or return None. ``running_cap`` (0: none): skip accounts that
        already run that many jobs, and prefer the accounts running the fewest.

        Correct with any number of workers in any processes: the candidate row is locked (``FOR UPDATE
        SKIP LOCKED`` on PostgreSQL, so workers pass each other's candidates by), then its account's
        row, and only then are the account's Running jobs counted again. Two workers claiming for one
        account take turns on that row, and the second one's count (a new statement, so a new snapshot
        under READ COMMITTED) sees the first one's committed claim. SQLite runs one writer at a time.
        """
        with self.db.session() as s:
            full: set[str] = set()  # accounts found at the cap once their row was locked
            while (row := s.execute(_next_candidate(running_cap, full)).first()) is not None:
                candidate, account_id = row
                if running_cap and _running_once_locked(s, account_id) >= running_cap:
                    full.add(account_id)
                    continue
                return self._start(s, candidate, worker_id)
            return None

    @staticmethod
    def _start(s: Session, candidate: str, worker_id: str) -> Claimed | None:
        now = utcnow()
        claimed = s.execute(
            update(Job)
            .where(Job.id == candidate, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.RUNNING,
                worker_id=worker_id,
                heartbeat_at=now,
                updated_at=now,
                attempts=Job.attempts + 1,
            )
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        attempts, job_type = s.execute(select(Job.attempts, Job.type).where(Job.id == candidate)).one()
        add_update(s, candidate, JobStatus.RUNNING, f"started (attempt {attempts})")
        return Claimed(candidate, attempts, job_type)

    def _owned(self, s: Session, job_id: str, worker_id: str) -> Job:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None or job.status != JobStatus.RUNNING or job.worker_id != worker_id:
            raise JobLost(job_id)
        return job

    def heartbeat(self, job_id: str, worker_id: str, progress: dict[str, Any] | None = None) -> None:
        with self.db.session() as s:
            job = self._owned(s, job_id, worker_id)
            job.heartbeat_at = job.updated_at = utcnow()
            if progress is not None:
                job.progress = progress

    def stage(self, job_id: str, worker_id: str, status: str, message: str) -> None:
        with self.db.session() as s:
            job = self._owned(s, job_id, worker_id)
            job.heartbeat_at = job.updated_at = utcnow()
            job.progress = {
                "stage": status,
                "bytes_done": 0,
                "bytes_total": None,
                "bytes_per_second": 0,
                "eta_seconds": None,
            }
            add_update(s, job_id, status, message)

    def complete(self, s: Session, job_id: str, worker_id: str, message: str) -> None:
        """End the job Complete inside the caller's transaction ``s`` (the one that registers what it
        made, so both land or neither does), and forget its secrets. Raises ``JobLost`` if not ours."""
        job = self._owned(s, job_id, worker_id)
        job.status, job.progress, job.updated_at = JobStatus.COMPLETE, None, utcnow()
        add_update(s, job_id, JobStatus.COMPLETE, message)
        s.execute(delete(JobSecret).where(JobSecret.job_id == job_id))
        scrub_after_commit(s)  # the token and signature leave the database files too

    def finish_failed(self, job_id: str, worker_id: str | None, code: str, message: str, problems: list[str]) -> None:
        """Fail the job, free its model name, forget its secrets. ``worker_id=None``: reaper's call."""
        with self.db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or JobStatus(job.status).terminal:
                return
            if worker_id is not None and job.worker_id != worker_id:
                raise JobLost(job_id)
            self._fail(s, job, code, message, problems)

    @staticmethod
    def _fail(s: Session, job: Job, code: str, message: str, problems: list[str]) -> None:
        job.status = JobStatus.FAILED
        job.error_code, job.error_message = code, message
        job.updated_at = utcnow()
        job.progress = None
        for problem in problems:
            add_update(s, job.id, JobStatus.FAILED, problem)
        if not problems:
            add_update(s, job.id, JobStatus.FAILED, message)
        s.execute(delete(JobSecret).where(JobSecret.job_id == job.id))
        scrub_after_commit(s)  # the token and signature leave the database files too
        # The revision the job was making keeps its problems (``revisions`` lists them); a first upload's
        # model, which only held the name, goes with it.
        revision_id = job.args.get("revisionId")
        if revision_id:
            s.execute(
                update(ModelRevision)
                .where(ModelRevision.id == revision_id, ModelRevision.status == RevisionStatus.PENDING)
                .values(status=RevisionStatus.FAILED, problems=problems or [message], validated_at=utcnow())
            )
        if job.model_id:
            model_id = job.model_id
            s.flush()
            gone = s.execute(delete(Model).where(Model.id == model_id, Model.status == ModelStatus.UPLOADING))
            if gone.rowcount:  # type: ignore[attr-defined]
                job.model_id = None

    def requeue(self, job_id: str, worker_id: str, reason: str, max_attempts: int) -> None:
        """Give a job back to the queue after a transient failure (its worker keeps running), or fail
        it once it has used up its attempts."""
        with self.db.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None or job.status != JobStatus.RUNNING or job.worker_id != worker_id:
                return
            if job.attempts >= max_attempts:
                self._fail(s, job, "database_unavailable", f"{reason}; giving up after {job.attempts} attempts", [])
                return
            job.status, job.worker_id, job.progress, job.updated_at = JobStatus.QUEUED, None, None, utcnow()
            add_update(s, job.id, JobStatus.QUEUED, f"{reason}; it will be resumed")

    def reap_stale(self, lease: timedelta, max_attempts: int) -> list[str]:
        """Take back Running jobs whose worker went silent. Returns the ids it touched."""
        cutoff = utcnow() - lease
        touched = []
        with self.db.session() as s:
            stale = s.scalars(
                select(Job)
                .where(Job.status == JobStatus.RUNNING, Job.heartbeat_at < cutoff)
                .with_for_update(skip_locked=True)
            ).all()
            for job in stale:
                touched.append(job.id)
                if job.attempts >= max_attempts:
                    msg = (
                        f"the worker running this job stopped responding {job.attempts} times "
                        "(crash or restart); giving up"
                    )
                    log.warning("job %s: failing after %d lost attempts", job.id, job.attempts)
                    self._fail(s, job, "worker_lost", msg, [])
                    continue
                log.warning("job %s: worker %s went silent; re-queueing", job.id, job.worker_id)
                job.status, job.worker_id, job.progress = JobStatus.QUEUED, None, None
                job.updated_at = utcnow()
                add_update(
                    s,
                    job.id,
                    JobStatus.QUEUED,
                    "the worker running this job stopped (crash or restart); it will be resumed",
                )
        return touched
