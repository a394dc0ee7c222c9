"""Stored models as local folders: what engines and tokenizers load from.

A revision's files are materialized from the blob store (hard links on local disk, downloads from S3)
into ``<data_dir>/cache/models/<revision id>`` once, through a temporary folder renamed into place, so a
crash never leaves a half-filled folder that looks complete.
"""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from modelport.errors import EngineFailed
from modelport.serving.engine import Artifact
from modelport.storage.blobs import BlobStore
from modelport.storage.db.tables import Model, RevisionFile

_SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class StoredFile(Protocol):
    """A revision's file as the cache needs it: a ``RevisionFile`` row, or an ``Artifact.files`` pair."""

    @property
    def path(self) -> str: ...

    @property
    def sha256(self) -> str: ...


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
        folder = self._ensure(key, files)
        weights = sum(f.size for f in files if f.path.endswith(".safetensors"))
        return Artifact(key, folder, manifest, weights, tuple((f.path, f.sha256) for f in files))

    def localize(self, artifact: Artifact) -> Artifact:
        """``artifact`` in a folder of this cache, fetched from the blob store by its ``files`` if need be.

        An engine on another host (a Ray node) calls this for every artifact it is sent: the folder named
        in it is on the API server's disk, which the node does not share."""
        if not artifact.files:
            raise EngineFailed(f"model {artifact.id} lists no files to fetch on this node")
        if not _SAFE_KEY.fullmatch(artifact.id):  # a folder name under this cache, never a path
            raise EngineFailed(f"refusing a model id that is not a plain name: {artifact.id!r}")
        folder = self._ensure(artifact.id, [_Pair(path, sha256) for path, sha256 in artifact.files])
        return replace(artifact, path=folder)

    def _ensure(self, key: str, files: Sequence[StoredFile]) -> Path:
        """The folder of ``key``, materialized once (one thread fills it while the others wait)."""
        folder = self.root / key
        if not folder.is_dir():
            with self._guard:
                lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                if not folder.is_dir():
                    self._materialize(folder, files)
        return folder

    def _materialize(self, folder: Path, files: Sequence[StoredFile]) -> None:
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


@dataclass(frozen=True)
class _Pair:
    path: str
    sha256: str
