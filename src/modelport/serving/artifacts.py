"""Stored models as local folders: what engines and tokenizers load from.

A revision's files are materialized from the blob store (hard links on local disk, downloads from S3)
into ``<data_dir>/cache/models/<revision id>`` once, through a temporary folder renamed into place, so a
crash never leaves a half-filled folder that looks complete.
"""

from __future__ import annotations

import shutil
import threading
import uuid
from pathlib import Path

from modelport.errors import EngineFailed
from modelport.serving.engine import Artifact
from modelport.storage.blobs import BlobStore
from modelport.storage.db.tables import Model, RevisionFile


class ArtifactCache:
    def __init__(self, root: Path, blobs: BlobStore) -> None:
        self.root, self.blobs = root, blobs
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, model: Model, files: list[RevisionFile]) -> Artifact:
        """Blocking (it may download): call it from a worker thread."""
        manifest = model.manifest
        if manifest is None:  # only ready models reach here, and ingest gives each its manifest
            raise EngineFailed(f"model {model.id} has no manifest: it is not ready to serve")
        # Keyed by revision: a new revision of a model is another folder, and another model to the engines.
        key = model.revision_id or model.id
        folder = self.root / key
        if not folder.is_dir():
            with self._guard:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                if not folder.is_dir():
                    self._materialize(folder, files)
        weights = sum(f.size for f in files if f.path.endswith(".safetensors"))
        return Artifact(key, folder, manifest, weights)

    def _materialize(self, folder: Path, files: list[RevisionFile]) -> None:
        tmp = self.root / f".incoming-{folder.name}-{uuid.uuid4().hex[:8]}"
        try:
            for f in files:
                dest = (tmp / f.path).resolve()
                if not dest.is_relative_to(tmp.resolve()):  # paths were checked at ingest; this is a backstop
                    raise ValueError(f"refusing to write {f.path!r} outside the model folder")
                self.blobs.materialize(f.sha256, dest)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def prune(self, live_ids: set[str]) -> int:
        """Remove folders of revisions that no longer exist (cleanup calls this)."""
        if not self.root.is_dir():
            return 0
        removed = 0
        for folder in self.root.iterdir():
            # ".incoming-*" folders may be filling right now; a failed one removes itself.
            if not folder.name.startswith(".") and folder.name not in live_ids:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed
