"""The local scratch tree an ingest builds before anything becomes visible, and progress reporting."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

CHUNK = 1 << 20


@dataclass(frozen=True)
class StagedFile:
    path: str  # relative, '/'-separated, as it will appear in the manifest
    size: int
    sha256: str
    local: Path


class Progress(Protocol):
    """What a running ingest tells its job. Implementations throttle writes themselves."""

    def stage(self, status: str, message: str) -> None: ...

    def bytes(self, done: int, total: int | None) -> None: ...


class NullProgress:
    def stage(self, status: str, message: str) -> None:
        pass

    def bytes(self, done: int, total: int | None) -> None:
        pass


def copy_hashed(src: IO[bytes], dest: Path, *, limit: int | None = None) -> tuple[int, str]:
    """Copy a stream to ``dest`` while hashing it; refuse to write more than ``limit`` bytes."""
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if limit is not None and size > limit:
                raise OverflowError(size)
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stage_existing(root: Path, rel: str) -> StagedFile:
    local = root / rel
    return StagedFile(path=rel, size=local.stat().st_size, sha256=hash_file(local), local=local)
