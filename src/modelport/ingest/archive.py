"""Safe extraction of one user archive (.zip, .tar, .tar.gz) into the staging tree.

The format is recognised by content. Every member name is checked before anything is written, and
any unsafe member rejects the whole archive (the caller then deletes the staging tree).
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from modelport.errors import ArchiveRejected
from modelport.ingest.staging import StagedFile, copy_hashed

# Finder and resource-fork litter that macOS puts in zips: harmless, and never part of a model.
_LITTER_DIRS = {"__MACOSX"}
_LITTER_NAMES = {".DS_Store"}
_NESTED_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".tar.gz", ".7z", ".rar", ".xz", ".bz2", ".zst")


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_total_bytes: int


@dataclass
class Extracted:
    files: list[StagedFile]
    flattened_from: str | None = None


def detect_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise ArchiveRejected(
        "the source is not a .zip, .tar or .tar.gz archive (checked by content, not by name)"
    )


def extract(archive: Path, dest: Path, limits: Limits) -> Extracted:
    fmt = detect_format(archive)
    files = _extract_zip(archive, dest, limits) if fmt == "zip" else _extract_tar(archive, dest, limits)
    if not files:
        raise ArchiveRejected("the archive contains no files")
    return _flatten(files)


def safe_member_path(name: str) -> str | None:
    """The normalised relative path of a member, ``None`` for litter; raises for unsafe names."""
    if "\\" in name or "\x00" in name:
        raise ArchiveRejected(f"archive member {name!r} has a backslash or NUL in its name")
    if name.startswith("/"):
        raise ArchiveRejected(f"archive member {name!r} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise ArchiveRejected(f"archive member {name!r} points outside the archive ('..')")
    if not parts or parts[0] in _LITTER_DIRS or parts[-1] in _LITTER_NAMES or parts[-1].startswith("._"):
        return None
    rel = "/".join(parts)
    if rel.lower().endswith(_NESTED_ARCHIVE_SUFFIXES):
        raise ArchiveRejected(f"archive member {name!r} is itself an archive; nested archives are refused")
    return rel


class _Budget:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.members = 0
        self.total = 0
        self.seen: set[str] = set()

    def admit(self, rel: str, declared_size: int) -> None:
        if rel in self.seen:
            raise ArchiveRejected(f"archive member {rel!r} appears more than once")
        self.seen.add(rel)
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveRejected(f"the archive holds more than {self.limits.max_members} files")
        if self.total + declared_size > self.limits.max_total_bytes:
            raise ArchiveRejected(
                f"archive member {rel!r} takes the unpacked size past {self.limits.max_total_bytes} bytes"
            )

    def remaining(self) -> int:
        return self.limits.max_total_bytes - self.total


def _write_member(src: IO[bytes], rel: str, dest: Path, budget: _Budget) -> StagedFile:
    local = dest / rel
    try:
        size, sha = copy_hashed(src, local, limit=budget.remaining())
    except OverflowError:
        raise ArchiveRejected(
            f"archive member {rel!r} takes the unpacked size past {budget.limits.max_total_bytes} bytes"
        ) from None
    budget.total += size
    return StagedFile(path=rel, size=size, sha256=sha, local=local)


def _extract_tar(archive: Path, dest: Path, limits: Limits) -> list[StagedFile]:
    budget = _Budget(limits)
    files = []
    try:
        # Stream mode ("r|*") reads the archive once, front to back, inflating gzip as it goes.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                rel = safe_member_path(member.name)
                if member.isdir() or rel is None:
                    continue
                if not member.isreg():
                    raise ArchiveRejected(
                        f"archive member {member.name!r} is a {_tar_kind(member)}; "
                        "only regular files are allowed"
                    )
                budget.admit(rel, member.size)
                src = tar.extractfile(member)
                assert src is not None
                files.append(_write_member(src, rel, dest, budget))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ArchiveRejected(f"the tar archive is corrupt or truncated: {type(e).__name__}") from None
    return files


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic link"
    if member.islnk():
        return "hard link"
    if member.isfifo():  # before isdev(), which counts FIFOs as devices
        return "FIFO"
    if member.isdev():
        return "device file"
    return "special file"


def _extract_zip(archive: Path, dest: Path, limits: Limits) -> list[StagedFile]:
    budget = _Budget(limits)
    files = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                rel = safe_member_path(info.filename)
                if info.is_dir() or rel is None:
                    continue
                # Unix-made zips keep st_mode in the high 16 bits; file type bits of 0 mean "plain file".
                file_type = stat.S_IFMT(info.external_attr >> 16)
                if file_type and file_type != stat.S_IFREG:
                    raise ArchiveRejected(f"archive member {info.filename!r} is not a regular file")
                budget.admit(rel, info.file_size)
                with zf.open(info) as src:
                    files.append(_write_member(src, rel, dest, budget))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as e:
        raise ArchiveRejected(f"the zip archive is corrupt or unsupported: {type(e).__name__}") from None
    return files


def _flatten(files: list[StagedFile]) -> Extracted:
    """Accept archives whose files all sit in one wrapping folder, as users often make them."""
    tops = {f.path.split("/", 1)[0] for f in files}
    if len(tops) != 1 or any("/" not in f.path for f in files):
        return Extracted(files)
    top = tops.pop()
    return Extracted(
        [StagedFile(f.path.split("/", 1)[1], f.size, f.sha256, f.local) for f in files], flattened_from=top
    )
