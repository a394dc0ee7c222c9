"""A direct multipart upload's files (``ingest/multipart.py``): each uploaded file is its parts joined
in order (each part checked against the MD5 verified at completion), each skipped one (``skipUpload``:
the account already stores that content) is copied from the blob store. The ordinary checks and
admission then run on the tree as on any other source. Once the job has registered the revision or
refused it, ``Fetched.release`` removes the parts."""

from __future__ import annotations

import functools
from pathlib import Path

from modelport.errors import ArchiveRejected, BlobUnavailable, NotFound, SourceUnavailable
from modelport.ingest.multipart import PartStore, PlannedFile, check_path
from modelport.ingest.sources.base import Fetched
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress, StagedFile, hash_file
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore


class PartsSource:
    def __init__(self, settings: Settings, parts: PartStore, blobs: BlobStore) -> None:
        self.settings, self.parts, self.blobs = settings, parts, blobs

    def fetch(self, spec: SourceSpec, staging: Path, progress: Progress, *, token: str | None = None) -> Fetched:
        try:
            planned = self.parts.plan(spec.url)
        except NotFound as e:
            raise SourceUnavailable(e.message) from None
        total = sum(f.size or 0 for f in planned)
        if total > self.settings.max_artifact_bytes:  # completion checked it; the plan is ours, but be sure
            raise ArchiveRejected(f"the files hold {total} bytes, past the limit of {self.settings.max_artifact_bytes}")
        tree = (staging / "tree").resolve()
        progress.stage("extracting", f"assembling {len(planned)} uploaded files")
        files, done = [], 0
        for entry in planned:
            dest = (tree / check_path(entry.path)).resolve()
            if not dest.is_relative_to(tree):  # paths were checked at upload; this is a backstop
                raise ArchiveRejected(f"refusing to write {entry.path!r} outside the model folder")
            dest.parent.mkdir(parents=True, exist_ok=True)
            sha256 = self._place(entry, dest)
            size = dest.stat().st_size
            files.append(StagedFile(entry.path, size, sha256, dest))
            done += size
            progress.bytes(done, total or done)
        etags = {f.path: f.etag for f in planned}
        return Fetched(files, etags=etags, release=functools.partial(self.parts.release, spec.url))

    def _place(self, entry: PlannedFile, dest: Path) -> str:
        if entry.upload_id is None:
            assert entry.sha256 is not None  # a skipped file names its stored blob
            self.blobs.materialize(entry.sha256, dest)
            return hash_file(dest)  # what the checks see is what the store holds
        try:
            return self.parts.assemble(entry, dest)
        except (OSError, ValueError, BlobUnavailable) as e:
            raise SourceUnavailable(f"the uploaded parts of {entry.path} cannot be read ({e}); upload again") from None
