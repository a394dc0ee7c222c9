"""What every source implements, and what the archive-shaped ones share.

A source turns a parsed ``SourceSpec`` into files in the job's staging folder. The pipeline never
branches on the source kind: it asks the registry (``sources/registry.py``) for the source of the
spec's kind and calls ``fetch``. Each source enforces its own budgets (bytes, rate, deadline) and
raises ``SourceUnavailable`` or ``ArchiveRejected`` with a message the user can act on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from modelport.ingest import archive
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress, StagedFile
from modelport.settings import Settings


@dataclass
class Fetched:
    files: list[StagedFile]
    not_fetched: list[str] = field(default_factory=list)  # names a source chose to leave (a hub's extras)
    etags: dict[str, str] = field(default_factory=dict)  # multipart ETags the source already knows, by path
    # What to drop once the job has registered the files or refused them (a direct upload's parts).
    release: Callable[[], None] | None = None


class Source(Protocol):
    def fetch(self, spec: SourceSpec, staging: Path, progress: Progress, *, token: str | None = None) -> Fetched:
        """Put the artifact's files under ``staging / "tree"``; ``token`` is the job's hub token, if any."""
        ...


def archive_limits(settings: Settings) -> archive.Limits:
    s = settings
    return archive.Limits(s.max_archive_members, s.max_artifact_bytes, s.max_compression_ratio, s.extract_threads)


def extraction_summary(extracted: archive.Extracted) -> str:
    total = sum(f.size for f in extracted.files)
    summary = f"extracted {len(extracted.files)} files ({total} bytes)"
    if extracted.flattened_from:
        summary += f"; the files sat inside one folder, {extracted.flattened_from!r}/, flattened to the root"
    return summary
