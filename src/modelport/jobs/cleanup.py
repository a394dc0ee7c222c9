"""Remove what failed or interrupted ingests left behind (staging trees, unreferenced blobs) and the
serving copies of deleted models."""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta

from sqlalchemy import select

from modelport.jobs.states import JobStatus
from modelport.serving.artifacts import ArtifactCache
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Job, Model, ModelFile, utcnow

log = logging.getLogger(__name__)


def collect_garbage(db: Database, blobs: BlobStore, settings: Settings) -> tuple[int, int]:
    """Returns (staging trees removed, blobs removed). Also drops serving copies of deleted models."""
    _clean_model_cache(db, blobs, settings)
    return _clean_staging(db, settings), _clean_blobs(db, blobs, settings)


def _clean_model_cache(db: Database, blobs: BlobStore, settings: Settings) -> int:
    with db.session() as s:
        live = set(s.scalars(select(Model.id)))
    return ArtifactCache(settings.model_cache_dir, blobs).prune(live)


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
        referenced = set(s.scalars(select(ModelFile.sha256).distinct()))
    removed = 0
    for sha, modified in list(blobs.iter_blobs()):
        if sha not in referenced and modified < cutoff:
            blobs.delete(sha)
            removed += 1
    if removed:
        log.info("cleanup: removed %d unreferenced blobs from %s", removed, blobs.describe())
    return removed
