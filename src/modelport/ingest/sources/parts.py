"""A direct multipart upload's files (``ingest/multipart.py``): each uploaded file is its parts joined
in order, each skipped one (``skipUpload``: the account already stores that content) is copied from
the blob store. The ordinary checks and admission then run on the tree as on any other source."""

from __future__ import annotations

from pathlib import Path

from modelport.errors import NotFound, SourceUnavailable
from modelport.ingest.multipart import PartStore
from modelport.ingest.sources.base import Fetched
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress, StagedFile, hash_file
from modelport.storage.blobs import BlobStore


class PartsSource:
    def __init__(self, parts: PartStore, blobs: BlobStore) -> None:
        self.parts, self.blobs = parts, blobs

    def fetch(self, spec: SourceSpec, staging: Path, progress: Progress, *, token: str | None = None) -> Fetched:
        try:
            planned = self.parts.plan(spec.url)
        except NotFound as e:
            raise SourceUnavailable(e.message) from None
        tree = staging / "tree"
        total = sum(f.size or 0 for f in planned)
        progress.stage("extracting", f"assembling {len(planned)} uploaded files")
        files, done = [], 0
        for entry in planned:
            dest = tree / entry.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if entry.upload_id is not None:
                sha256 = self._assemble(entry.upload_id, entry.path, dest)
            else:
                assert entry.sha256 is not None  # a skipped file names its stored blob
                self.blobs.materialize(entry.sha256, dest)
                sha256 = hash_file(dest)  # what the checks see is what the store holds
            size = dest.stat().st_size
            files.append(StagedFile(entry.path, size, sha256, dest))
            done += size
            progress.bytes(done, total or done)
        return Fetched(files, etags={f.path: f.etag for f in planned})

    def _assemble(self, upload_id: str, path: str, dest: Path) -> str:
        try:
            return self.parts.assemble(upload_id, dest)
        except (OSError, ValueError):
            raise SourceUnavailable(f"the uploaded parts of {path} are gone (expired); upload again") from None
