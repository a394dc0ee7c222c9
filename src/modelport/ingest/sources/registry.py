"""Sources by kind. Adding one is a module with a ``fetch`` (``base.Source``) and a line here.

Factories import their module when called: the hub client costs an import nobody else should pay.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelport.ingest.multipart import PartStore
from modelport.ingest.sources.base import Source
from modelport.ingest.sources.guard import FetchPolicy
from modelport.ingest.sources.spec import SourceKind
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore


@dataclass(frozen=True)
class Needs:
    """What sources are built from; each takes what it uses."""

    settings: Settings
    policy: FetchPolicy  # ``Settings.fetch_allow`` and friends, shared by the sources that fetch
    parts: PartStore  # direct uploads' parts (Together v2)
    blobs: BlobStore


def _huggingface(needs: Needs) -> Source:
    from modelport.ingest.sources.huggingface import HuggingFaceSource

    return HuggingFaceSource(needs.settings, needs.policy)


def _archive_url(needs: Needs) -> Source:
    from modelport.ingest.sources.archive_url import ArchiveUrlSource

    return ArchiveUrlSource(needs.settings, needs.policy)


def _upload(needs: Needs) -> Source:
    from modelport.ingest.sources.upload import UploadSource

    return UploadSource(needs.settings)


def _parts(needs: Needs) -> Source:
    from modelport.ingest.sources.parts import PartsSource

    return PartsSource(needs.settings, needs.parts, needs.blobs)


SOURCES: dict[SourceKind, Callable[[Needs], Source]] = {
    SourceKind.HUGGINGFACE: _huggingface,
    SourceKind.REMOTE_ARCHIVE: _archive_url,
    SourceKind.UPLOAD: _upload,
    SourceKind.PARTS: _parts,
}


def open_sources(settings: Settings, parts: PartStore, blobs: BlobStore) -> dict[SourceKind, Source]:
    """One source per kind."""
    needs = Needs(settings, FetchPolicy.from_settings(settings), parts, blobs)
    return {kind: make(needs) for kind, make in SOURCES.items()}
