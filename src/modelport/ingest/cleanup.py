"""Remove what failed or interrupted ingests left behind: staging trees, unreferenced blobs, expired
uploads. (The serving copies of deleted models are the artifact cache's: ``ArtifactCache.prune``.)"""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta

from sqlalchemy import select

from modelport.ingest.uploads import Uploads
from modelport.jobs.states import JobStatus
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Job, JobSecret, RevisionFile, Upload, utcnow

log = logging.getLogger(__name__)


def collect_garbage(db: Database, blobs: BlobStore, settings: Settings) -> tuple[int, int]:
    """Returns (staging trees removed, blobs removed). Also drops uploads past their time to live."""
    _clean_uploads(db, settings)
    return _clean_staging(db, settings), _clean_blobs(db, blobs, settings)


def _clean_uploads(db: Database, settings: Settings) -> int:
    """Uploads older than ``upload_ttl_s`` go, unless a queued or running job still needs theirs."""
    cutoff = utcnow() - timedelta(seconds=settings.upload_ttl_s)
    with db.session() as s:
        active = {j.source for j in s.scalars(select(JobSecret))}  # secrets live exactly while a job does
        expired = [u.id for u in s.scalars(select(Upload).where(Upload.created_at < cutoff)) if u.id not in active]
    uploads = Uploads(settings, db)
    for upload_id in expired:
        uploads.discard(upload_id)
    if settings.uploads_dir.is_dir():  # folders whose row never committed (a crash mid-upload)
        with db.session() as s:
            known = set(s.scalars(select(Upload.id)))
        for folder in settings.uploads_dir.iterdir():
            if folder.name not in known and folder.stat().st_mtime < cutoff.timestamp():
                shutil.rmtree(folder, ignore_errors=True)
    return len(expired)


def _clean_staging(db: Database, settings: Settings) -> int:
    if not settings.staging_dir.exists():
        return 0
    with db.session() as s:
        running = set(s.scalars(select(Job.id).where(Job.status == JobStatus.RUNNING)))
    removed = 0
    for tree in settings.staging_dir.iterdir():
        if tree.name not in running:
            shutil.rmtree(tree, ignore_errors=True)
            removed += 1
    return removed


def _clean_blobs(db: Database, blobs: BlobStore, settings: Settings) -> int:
    # Blobs younger than the grace period may belong to an ingest between "stored" and "registered".
    cutoff = utcnow() - timedelta(seconds=settings.blob_gc_grace_s)
    with db.session() as s:
        referenced = set(s.scalars(select(RevisionFile.sha256).distinct()))
    removed = 0
    for sha, modified in list(blobs.iter_blobs()):
        if sha not in referenced and modified < cutoff:
            blobs.delete(sha)
            removed += 1
    if removed:
        log.info("cleanup: removed %d unreferenced blobs from %s", removed, blobs.describe())
    return removed
