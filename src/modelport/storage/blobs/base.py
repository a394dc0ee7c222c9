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
from typing import BinaryIO, Protocol


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
