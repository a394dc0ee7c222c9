"""Per-account limits, so one tenant cannot take a shared server's disk, workers or engine from the others.

- Counts (models, active jobs, open uploads) and storage are checked in the transaction that adds to
  them, with the account's row locked, so concurrent submissions cannot both slip under a limit (on
  PostgreSQL; SQLite serialises writers anyway).
- Storage (``quota_stored_bytes``) counts every byte an account keeps on this server: its models,
  and its uploads, finished or not. A resumable upload counts its declared size from the moment it
  is created; a whole (multipart) upload has no declared size, so it counts what has arrived, checked
  as bytes arrive (see ``ingest/uploads.py``).
- Not twice: an upload that a ready model was made from counts through that model, not beside it
  (the archive and the stored model are two copies of one thing), and the job turning an upload
  into a model checks the model's size *in place of* the upload's. So a tenant can always ingest an
  upload that fits the quota, whether it keeps the upload afterwards (the API allows it; uploads
  expire after ``upload_ttl_s``) or deletes it (the CLI does, once the job ends). The cost of this
  choice: a kept archive of a ready model is on disk uncounted until it expires or is deleted.
- A model's bytes are the distinct contents of its ready revisions: a new revision that changes one
  file of a large model adds that file, as the blob store keeps it. (A job's checks count the whole new
  revision, so they err on the side of refusing.) A direct upload's parts (Together v2) count while
  their sessions are open: ``Transfers.create_upload`` adds what they hold to the declared size.
- Model storage is known only once a model is unpacked: submission refuses an account that is
  already full, and the job checks again before it stores anything and when it registers the model.
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
from modelport.jobs.states import JobStatus, RevisionStatus
from modelport.settings import Settings
from modelport.storage.db.tables import Account, Job, Model, ModelRevision, RevisionFile, Upload

# A full job queue drains at the speed of ingestion; a client told to come back sooner only polls.
ACTIVE_JOBS_RETRY_AFTER_S = 30
RECEIVING = "receiving"  # an upload's status until every byte is there (``ingest/uploads.py``)
UPLOAD_SOURCE = "upload"  # ``Model.source_kind`` of a model made from an upload (``SourceKind.UPLOAD``)
_MANAGE_UPLOADS = "GET /api/v1/uploads lists them, DELETE /api/v1/uploads/{id} removes one"


def lock_account(s: Session, account_id: str) -> None:
    """Serialise this account's quota-checked writes until the transaction ends."""
    s.execute(select(Account.id).where(Account.id == account_id).with_for_update())


def stored_bytes(s: Session, account_id: str, *, replacing: str | None = None) -> int:
    """Bytes the account keeps here: its models plus its uploads (see the module doc for what counts once).

    ``replacing``: an upload about to become a model, counted as that model rather than beside it.
    """
    # The distinct contents of its ready revisions: a revision that changes one file of a large model
    # adds that file, as the blob store keeps it (failed revisions hold nothing; pending ones are counted
    # as their jobs store them).
    ready = (Model.account_id == account_id) & (ModelRevision.status == RevisionStatus.READY)
    contents = (
        select(RevisionFile.sha256, RevisionFile.size)
        .join(ModelRevision, ModelRevision.id == RevisionFile.revision_id)
        .join(Model, Model.id == ModelRevision.model_id)
        .where(ready)
        .distinct()
        .subquery()
    )
    models = s.scalar(select(func.coalesce(func.sum(contents.c.size), 0)))
    made_into_models = (
        select(ModelRevision.source)
        .join(Model, Model.id == ModelRevision.model_id)
        .where(ready, ModelRevision.source_kind == UPLOAD_SOURCE)
    )
    uploads = select(func.coalesce(func.sum(Upload.size), 0)).where(
        Upload.account_id == account_id, Upload.id.not_in(made_into_models)
    )
    if replacing is not None:
        uploads = uploads.where(Upload.id != replacing)
    return int(models or 0) + int(s.scalar(uploads) or 0)


def check_submission(
    s: Session, settings: Settings, account_id: str, *, from_upload: str | None = None, new_model: bool = True
) -> None:
    """Before a new model (or a new revision of one, ``new_model=False``) and its job are added (the
    caller holds ``lock_account``).

    ``from_upload``: the upload the model is made from; its bytes are about to become the model's.
    """
    if settings.quota_models and new_model:
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
    quota = settings.quota_stored_bytes
    if quota and stored_bytes(s, account_id, replacing=from_upload) >= quota:
        raise QuotaExceeded(
            f"this account's models and uploads fill its storage quota of {human_bytes(quota)}: "
            f"delete a model or an upload to upload another ({_MANAGE_UPLOADS})"
        )


def check_storage(
    s: Session, settings: Settings, account_id: str, adding: int, *, revision_id: str | None = None
) -> None:
    """Before a job stores (and again when it registers) ``adding`` bytes for the account.

    ``revision_id``: the revision being stored; an upload it is made from is counted as it, not beside it.
    """
    if not settings.quota_stored_bytes:
        return
    source = None
    if revision_id is not None:
        source = s.scalar(
            select(ModelRevision.source).where(
                ModelRevision.id == revision_id, ModelRevision.source_kind == UPLOAD_SOURCE
            )
        )
    used = stored_bytes(s, account_id, replacing=source)
    if used + adding > settings.quota_stored_bytes:
        raise StorageQuotaFull(
            f"storing this model ({human_bytes(adding)}) would take the account to {human_bytes(used + adding)}, "
            f"past its storage quota of {human_bytes(settings.quota_stored_bytes)}; delete models or uploads, or "
            "ask the operator for more"
        )


def check_new_upload(s: Session, settings: Settings, account_id: str, declared: int) -> int | None:
    """Before an upload is added (the caller holds ``lock_account``): the cap on uploads still receiving,
    and room for its ``declared`` size (0 for a whole upload, which counts its bytes as they arrive).

    Returns the bytes the account may still add, or None when storage is not limited.
    """
    cap = settings.quota_open_uploads
    if cap:
        open_uploads = s.scalar(
            select(func.count()).select_from(Upload).where(Upload.account_id == account_id, Upload.status == RECEIVING)
        )
        if (open_uploads or 0) >= cap:
            raise QuotaExceeded(
                f"this account has {open_uploads} uploads still receiving, its limit is {cap}: complete or delete "
                f"one to start another ({_MANAGE_UPLOADS})",
                param="upload",
            )
    return _room(s, settings, account_id, declared, "this upload")


def check_upload_size(s: Session, settings: Settings, account_id: str) -> int | None:
    """After an upload's recorded size grew (so it is counted): is the account still within its quota?

    Returns the bytes the account may still add, or None when storage is not limited.
    """
    return _room(s, settings, account_id, 0, "this upload")


def _room(s: Session, settings: Settings, account_id: str, adding: int, what: str) -> int | None:
    quota = settings.quota_stored_bytes
    if not quota:
        return None
    used = stored_bytes(s, account_id)
    if used + adding > quota:
        shown = f"{what} ({human_bytes(adding)})" if adding else what
        raise QuotaExceeded(
            f"{shown} would take the account's models and uploads to {human_bytes(used + adding)}, past its "
            f"storage quota of {human_bytes(quota)} (MODELPORT_QUOTA_STORED_BYTES): delete models or uploads "
            f"first ({_MANAGE_UPLOADS})",
            param="upload",
        )
    return quota - used - adding


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
