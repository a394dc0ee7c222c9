"""Per-account limits, so one tenant cannot take a shared server's disk, workers or engine from the others.

- Counts (models, active jobs) and storage are checked in the transaction that adds to them, with the
  account's row locked, so concurrent submissions cannot both slip under a limit (on PostgreSQL;
  SQLite serialises writers anyway).
- Storage is known only once a model is unpacked: submission refuses an account that is already
  full, and the job checks again before it stores anything and when it registers the model.
- Inference is rate limited in process by a token bucket per account: ``quota_requests_per_minute``
  tokens, refilled continuously, so a burst of that size is fine and a steady flood gets 429 with the
  seconds until the next token.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from modelport.errors import QuotaExceeded, RateLimited, StorageQuotaFull
from modelport.humanize import human_bytes
from modelport.jobs.states import JobStatus
from modelport.settings import Settings
from modelport.storage.db.tables import Account, Job, Model

# A full job queue drains at the speed of ingestion; a client told to come back sooner only polls.
ACTIVE_JOBS_RETRY_AFTER_S = 30


def lock_account(s: Session, account_id: str) -> None:
    """Serialise this account's quota-checked writes until the transaction ends."""
    s.execute(select(Account.id).where(Account.id == account_id).with_for_update())


def stored_bytes(s: Session, account_id: str) -> int:
    total = s.scalar(select(func.coalesce(func.sum(Model.total_bytes), 0)).where(Model.account_id == account_id))
    return int(total or 0)


def check_submission(s: Session, settings: Settings, account_id: str) -> None:
    """Before a new model and its job are added (the caller holds ``lock_account``)."""
    if settings.quota_models:
        count = s.scalar(select(func.count()).select_from(Model).where(Model.account_id == account_id)) or 0
        if count >= settings.quota_models:
            raise QuotaExceeded(
                f"this account has {count} models, its limit is {settings.quota_models}: delete one to upload another"
            )
    if settings.quota_active_jobs:
        active = (
            s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.account_id == account_id, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
            )
            or 0
        )
        if active >= settings.quota_active_jobs:
            raise QuotaExceeded(
                f"this account has {active} upload jobs queued or running, its limit is "
                f"{settings.quota_active_jobs}: wait for one to finish",
                retry_after=ACTIVE_JOBS_RETRY_AFTER_S,
            )
    if settings.quota_stored_bytes and stored_bytes(s, account_id) >= settings.quota_stored_bytes:
        raise QuotaExceeded(
            f"this account's models fill its storage quota of {human_bytes(settings.quota_stored_bytes)}: "
            "delete a model to upload another"
        )


def check_storage(s: Session, settings: Settings, account_id: str, adding: int) -> None:
    """Before a job stores (and again when it registers) ``adding`` bytes for the account."""
    if not settings.quota_stored_bytes:
        return
    used = stored_bytes(s, account_id)
    if used + adding > settings.quota_stored_bytes:
        raise StorageQuotaFull(
            f"storing this model ({human_bytes(adding)}) would take the account to {human_bytes(used + adding)}, "
            f"past its storage quota of {human_bytes(settings.quota_stored_bytes)}; delete models or ask the "
            "operator for more"
        )


class RateLimiter:
    """A token bucket per key; ``take`` raises ``RateLimited`` with the wait until a token is free."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1.0 - tokens) / self.rate)
                raise RateLimited(
                    f"this account may send {int(self.capacity)} inference requests per minute; try again in {wait} s",
                    retry_after=wait,
                )
            self._buckets[key] = (tokens - 1.0, now)
