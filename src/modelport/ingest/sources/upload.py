"""A direct upload: an archive already on this machine (``ingest/uploads.py`` received it)."""

from __future__ import annotations

from pathlib import Path

from modelport.errors import SourceUnavailable
from modelport.ingest import archive
from modelport.ingest.sources.base import Fetched, archive_limits, extraction_summary
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress
from modelport.ingest.uploads import archive_path
from modelport.settings import Settings


class UploadSource:
    """Unpacks an uploaded archive with the same checks as a downloaded one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def fetch(self, spec: SourceSpec, staging: Path, progress: Progress, *, token: str | None = None) -> Fetched:
        path = archive_path(self.settings, spec.url)
        if not path.is_file():
            raise SourceUnavailable(f"the uploaded file {spec.url} is gone (deleted or expired)")
        progress.stage("extracting", f"unpacking {spec.url} ({path.stat().st_size} bytes)")
        extracted = archive.extract_file(path, staging / "tree", archive_limits(self.settings))
        progress.stage("extracting", extraction_summary(extracted))
        return Fetched(extracted.files)
