"""Sources by kind. Adding one is a module with a ``fetch`` (``base.Source``) and a line here.

Factories import their module when called: the hub client costs an import nobody else should pay.
"""

from __future__ import annotations

from collections.abc import Callable

from modelport.ingest.multipart import PartStore
from modelport.ingest.sources.base import Source
from modelport.ingest.sources.guard import FetchPolicy
from modelport.ingest.sources.spec import SourceKind
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore


def _huggingface(settings: Settings, policy: FetchPolicy) -> Source:
    from modelport.ingest.sources.huggingface import HuggingFaceSource

    return HuggingFaceSource(settings, policy)


def _archive_url(settings: Settings, policy: FetchPolicy) -> Source:
    from modelport.ingest.sources.archive_url import ArchiveUrlSource

    return ArchiveUrlSource(settings, policy)


def _upload(settings: Settings, policy: FetchPolicy) -> Source:
    from modelport.ingest.sources.upload import UploadSource

    return UploadSource(settings)


SOURCES: dict[SourceKind, Callable[[Settings, FetchPolicy], Source]] = {
    SourceKind.HUGGINGFACE: _huggingface,
    SourceKind.REMOTE_ARCHIVE: _archive_url,
    SourceKind.UPLOAD: _upload,
}


def open_sources(settings: Settings, parts: PartStore, blobs: BlobStore) -> dict[SourceKind, Source]:
    """One source per kind, sharing the fetch policy (``Settings.fetch_allow`` and friends)."""
    from modelport.ingest.sources.parts import PartsSource

    policy = FetchPolicy.from_settings(settings)
    sources = {kind: make(settings, policy) for kind, make in SOURCES.items()}
    sources[SourceKind.PARTS] = PartsSource(settings, parts, blobs)  # the one source that reads the blob store
    return sources
