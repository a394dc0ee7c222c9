"""The blob store interface.

Blobs are named by the sha256 of their content, which the caller computed while writing the staged
file. ``put`` makes a staged file visible under that name in one atomic step (rename on local disk,
a completed PUT on S3); a blob is only *referenced* once the database commit that lists it lands, and
``iter_blobs`` lets cleanup remove blobs nothing references.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


class BlobStore(Protocol):
    def put(self, staged: Path, sha256: str) -> None:
        """Move (or copy) a staged file into the store; a no-op if that content is already there."""

    def has(self, sha256: str) -> bool: ...

    def open(self, sha256: str) -> BinaryIO: ...

    def read_range(self, sha256: str, start: int, length: int) -> bytes: ...

    def materialize(self, sha256: str, dest: Path) -> None:
        """Make the blob available as a local file at ``dest`` (a hard link where possible)."""
        ...

    def delete(self, sha256: str) -> None: ...

    def iter_blobs(self) -> Iterator[tuple[str, datetime]]:
        """Every stored blob with its last-modified time."""
        ...

    def describe(self) -> str: ...

    def local_path(self, sha256: str) -> Path | None:
        """The blob's file on this machine, where the store keeps one (local disk), else None."""
        ...


@runtime_checkable
class DirectTransfer(Protocol):
    """A store that clients can write to and read from without the bytes crossing this server (S3 and
    its presigned URLs). ``name`` is an upload session's id; its object lives outside the blobs."""

    def start_upload(self, name: str) -> str:
        """Begin a multipart upload of ``name``; returns the store's upload id."""
        ...

    def part_url(self, name: str, upload: str, number: int, length: int | None, ttl_s: float) -> str:
        """A presigned URL for one part; ``length``: its exact size, signed in, when known."""
        ...

    def finish_upload(self, name: str, upload: str, parts: list[tuple[int, str]]) -> tuple[str, int]:
        """Complete the upload from its parts' ETags; returns the object's ETag and size."""
        ...

    def fetch_upload(self, name: str, dest: Path) -> None: ...

    def drop_upload(self, name: str, upload: str) -> None:
        """Abort the multipart upload and delete its object, whichever exists."""
        ...

    def blob_url(self, sha256: str, ttl_s: float) -> str:
        """A presigned GET of a blob (ranges allowed)."""
        ...
