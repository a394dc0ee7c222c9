"""Content-addressed blob stores. ``open_blob_store(settings)`` picks one by URL scheme."""

from __future__ import annotations

from modelport.settings import Settings
from modelport.storage.blobs.base import BlobStore, DirectTransfer
from modelport.storage.blobs.local import LocalBlobStore


def open_blob_store(settings: Settings) -> BlobStore:
    if settings.blob_url.startswith("s3://"):
        from modelport.storage.blobs.s3 import S3BlobStore  # boto3 is slow to import; only when needed

        return S3BlobStore.from_settings(settings)
    return LocalBlobStore.from_url(settings.blob_url)


__all__ = ["BlobStore", "DirectTransfer", "LocalBlobStore", "open_blob_store"]
