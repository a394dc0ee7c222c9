"""A direct multipart upload's files (``ingest/multipart.py``): each uploaded file is its parts joined
in order, each skipped one (``skipUpload``: the account already stores that content) is copied from
the blob store. The ordinary checks and admission then run on the tree as on any other source."""

from __future__ import annotations

import hashlib
from pathlib import Path

from modelport.errors import NotFound, SourceUnavailable
from modelport.ingest.multipart import PartStore, PlannedFile
from modelport.ingest.sources.base import Fetched
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress, StagedFile, hash_file
from modelport.storage.blobs import BlobStore

COPY = 1 << 20


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
                sha256 = self._join(entry, dest)
            else:
                assert entry.sha256 is not None  # a skipped file names its stored blob
                self.blobs.materialize(entry.sha256, dest)
                sha256 = hash_file(dest)  # what the checks see is what the store holds
            size = dest.stat().st_size
            files.append(StagedFile(entry.path, size, sha256, dest))
            done += size
            progress.bytes(done, total or done)
        return Fetched(files, etags={f.path: f.etag for f in planned})

    def _join(self, entry: PlannedFile, dest: Path) -> str:
        assert entry.upload_id is not None
        digest = hashlib.sha256()
        try:
            with open(dest, "wb") as out:
                for part in self.parts.part_paths(entry.upload_id):
                    with open(part, "rb") as f:
                        while chunk := f.read(COPY):
                            digest.update(chunk)
                            out.write(chunk)
        except OSError:
            raise SourceUnavailable(f"the uploaded parts of {entry.path} are gone (expired); upload again") from None
        return digest.hexdigest()
