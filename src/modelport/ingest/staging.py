"""The local scratch tree an ingest builds before anything becomes visible, and progress reporting."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sqlalchemy.orm import Session

CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative, '/'-separated, as it will appear in the manifest
    size: int
    sha256: str
    local: Path


class ChunkReader:
    """``read(n)`` over a source of successive chunks, copying only the bytes it returns.

    Slicing the remainder off a buffer on every read is quadratic when callers read in small pieces
    (gzip and tar readers do); an offset into the current chunk is not.
    """

    def __init__(self, next_chunk: Callable[[], bytes]) -> None:
        self._next_chunk = next_chunk
        self._chunk = b""
        self._offset = 0
        self._eof = False
        self._pulled = 0  # bytes taken from the source so far

    @property
    def position(self) -> int:
        """Bytes consumed so far: what was pulled from the source, less what is still buffered."""
        return self._pulled - (len(self._chunk) - self._offset)

    def read(self, n: int = -1) -> bytes:
        parts = []
        while n != 0:
            if self._offset >= len(self._chunk) and (self._eof or not self._refill()):
                break
            end = len(self._chunk) if n < 0 else min(len(self._chunk), self._offset + n)
            parts.append(self._chunk[self._offset : end])
            if n > 0:
                n -= end - self._offset
            self._offset = end
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read_some(self, limit: int = -1) -> bytes:
        """Whatever is buffered (at most ``limit`` bytes), or the next chunk: no copying beyond one slice."""
        if self._offset >= len(self._chunk) and (self._eof or not self._refill()):
            return b""
        end = len(self._chunk) if limit < 0 else min(len(self._chunk), self._offset + limit)
        out, self._offset = self._chunk[self._offset : end], end
        return out

    def unread(self, data: bytes) -> None:
        """Put bytes back in front (a decompressor read past the end of its member)."""
        if data:
            self._chunk, self._offset = data + self._chunk[self._offset :], 0

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end), without consuming them."""
        while len(self._chunk) - self._offset < n and not self._eof:
            more = self._next_chunk()
            self._eof = not more
            self._pulled += len(more)
            self._chunk, self._offset = self._chunk[self._offset :] + more, 0
        return self._chunk[self._offset : self._offset + n]

    def _refill(self) -> bool:
        self._chunk, self._offset = self._next_chunk(), 0
        self._eof = not self._chunk
        self._pulled += len(self._chunk)
        return not self._eof

    def readable(self) -> bool:
        return True


class Progress(Protocol):
    """What a running ingest tells its job. Implementations throttle writes themselves."""

    def stage(self, status: str, message: str) -> None: ...

    def bytes(self, done: int, total: int | None) -> None: ...


class Reporter(Progress, Protocol):
    """Progress plus the end: what the pipeline needs of the job it runs for (``jobs/progress.py``)."""

    def complete(self, s: Session, message: str) -> None:
        """End the job Complete inside ``s``, the transaction that registers the model."""
        ...


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stage_existing(root: Path, rel: str) -> StagedFile:
    local = root / rel
    return StagedFile(path=rel, size=local.stat().st_size, sha256=hash_file(local), local=local)
