"""Blobs on the local filesystem, under ``<root>/sha256/ab/<hash>``."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from modelport.errors import BlobUnavailable


def _check_hash(sha256: str) -> str:
    # Names come from our own hashing, but never let anything else build a path.
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return sha256


class LocalBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sha256").mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_url(cls, url: str) -> LocalBlobStore:
        return cls(Path(unquote(urlparse(url).path)))

    def _path(self, sha256: str) -> Path:
        _check_hash(sha256)
        return self.root / "sha256" / sha256[:2] / sha256

    def local_path(self, sha256: str) -> Path | None:
        return self._path(sha256)

    def put(self, staged: Path, sha256: str) -> None:
        final = self._path(sha256)
        if final.exists():
            # Refresh its age so cleanup's grace period covers the ingest about to reference it.
            os.utime(final)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Same filesystem: a hard link appears atomically and copies nothing.
            os.link(staged, final)
            return
        except FileExistsError:
            return
        except OSError:
            pass
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out, open(staged, "rb") as src:
                shutil.copyfileobj(src, out, 8 * 2**20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def has(self, sha256: str) -> bool:
        return self._path(sha256).exists()

    def open(self, sha256: str) -> BinaryIO:
        try:
            return open(self._path(sha256), "rb")
        except FileNotFoundError as e:
            raise BlobUnavailable(f"blob {sha256} is missing from the store") from e

    def read_range(self, sha256: str, start: int, length: int) -> bytes:
        with self.open(sha256) as f:
            f.seek(start)
            return f.read(length)

    def materialize(self, sha256: str, dest: Path) -> None:
        src = self._path(sha256)
        if not src.exists():
            raise BlobUnavailable(f"blob {sha256} is missing from the store")
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dest)
        except OSError:
            shutil.copyfile(src, dest)

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def iter_blobs(self) -> Iterator[tuple[str, datetime]]:
        for path in (self.root / "sha256").glob("??/*"):
            if path.name.startswith(".incoming-"):
                continue
            yield path.name, datetime.fromtimestamp(path.stat().st_mtime, UTC)

    def describe(self) -> str:
        return f"local:{self.root}"
