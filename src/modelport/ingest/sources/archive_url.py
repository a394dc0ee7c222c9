"""An archive at a URL (an S3 presigned URL, any https link): streamed, never kept whole.

Download, inflation, parsing, hashing and writing happen in one pass (``http.Prefetched`` reads ahead
on a thread of its own). A zip that can only be read directory-first falls back to range requests.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any

from modelport.errors import ArchiveRejected, NeedsRandomAccess, SourceUnavailable
from modelport.ingest import archive
from modelport.ingest.sources import http
from modelport.ingest.sources.base import Fetched, archive_limits, extraction_summary
from modelport.ingest.sources.budget import DownloadBudget
from modelport.ingest.sources.guard import FetchPolicy
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress
from modelport.settings import Settings


class ArchiveUrlSource:
    def __init__(self, settings: Settings, policy: FetchPolicy) -> None:
        self.settings, self.policy = settings, policy

    def fetch(self, spec: SourceSpec, staging: Path, progress: Progress, *, token: str | None = None) -> Fetched:
        s = self.settings
        counter = _Downloaded(progress, s.max_archive_bytes)
        opts: dict[str, Any] = {
            "policy": self.policy,
            "timeout_s": s.fetch_timeout_s,
            "retries": s.fetch_retries,
            # One budget for the job's whole download: a rate floor and a deadline (``budget.py``).
            "budget": DownloadBudget.from_settings(s, spec.display),
            "on_bytes": counter.add,
        }
        limits, tree = archive_limits(s), staging / "tree"
        stream = http.ResumableStream(spec, **opts)
        try:
            info = counter.expect(stream.info)
            fmt = archive.detect_format(stream.peek(512))
            progress.stage("downloading", _download_summary(fmt, info, spec))
            extracted = _extract(http.Prefetched(stream), fmt, tree, limits)
        except NeedsRandomAccess:
            if not (info.ranges and info.size is not None):
                raise ArchiveRejected(
                    "this zip stores an uncompressed entry with a data descriptor, which can only be read "
                    "directory-first, and the server does not support range requests; re-create it with "
                    "`zip -r` or upload a .tar.gz"
                ) from None
            shutil.rmtree(tree, ignore_errors=True)
            extracted = archive.extract_zip(lambda: http.RangeFile(spec, info, **opts), tree, limits)  # type: ignore[arg-type,return-value]
        finally:
            stream.close()
        progress.stage("extracting", extraction_summary(extracted))
        return Fetched(extracted.files)


def _extract(reader: http.Prefetched, fmt: str, tree: Path, limits: archive.Limits) -> archive.Extracted:
    with contextlib.closing(reader):
        if fmt == "zip":
            return archive.extract_zip_stream(reader, tree, limits)
        return archive.extract_tar(reader, fmt == "tar.gz", tree, limits)


def _download_summary(fmt: str, info: http.SourceInfo, spec: SourceSpec) -> str:
    size = "unknown size" if info.size is None else f"{info.size} bytes"
    return f"streaming a .{fmt} archive ({size}) from {spec.display}: download, extraction and hashing in one pass"


class _Downloaded:
    """Counts source bytes from any thread, reports progress, and enforces the archive size limit."""

    def __init__(self, progress: Progress, limit: int) -> None:
        self.progress, self.limit = progress, limit
        self.total: int | None = None
        self.done = 0
        self._lock = threading.Lock()

    def expect(self, info: http.SourceInfo) -> http.SourceInfo:
        """Learn the announced size; refuse an archive over the limit before reading it."""
        if info.size is not None and info.size > self.limit:
            raise SourceUnavailable(f"the archive is {info.size} bytes; the limit is {self.limit} bytes")
        self.total = info.size
        return info

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            done = self.done
        if done > self.limit:
            raise SourceUnavailable(f"the archive exceeds the limit of {self.limit} bytes")
        self.progress.bytes(done, self.total)
