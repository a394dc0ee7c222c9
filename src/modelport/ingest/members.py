"""What an archive member may be called, and how much one archive may unpack: the same rules for every
format (tar, tar.gz, zip streamed or read directory-first), counted on real bytes.

- Names: relative, no ``..``, no backslash or NUL, valid UTF-8, at most ``MAX_COMPONENT_BYTES`` per
  folder or file name and ``MAX_PATH_BYTES`` in all; no two members that one case-insensitive or
  Unicode-normalising filesystem (macOS, Windows) would store as the same file.
- Sizes: at most ``max_members`` files, ``max_entries`` headers of any kind, ``max_total_bytes`` written.
- Ratio: the whole archive's unpacked bytes (written or skipped) against the archive bytes read so far,
  with one fixed grace for the archive (``RATIO_GRACE_BYTES``), never one per member that adds up.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from modelport.errors import ArchiveRejected, ExtractionStopped

MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux, macOS and Windows: a longer name cannot be created at all
MAX_PATH_BYTES = 1024  # far below PATH_MAX (4096) once the staging root is put in front
# Below this many unpacked bytes in the whole archive the ratio check stays quiet: small, very
# compressible JSON is normal. It is one allowance for the archive, not one per member.
RATIO_GRACE_BYTES = 16 * 2**20
# Compressed bytes handed to an inflater at a time. The ratio compares what came out with what went in,
# so a small feed keeps "what went in" close to what was really used: a bomb cannot borrow allowance
# from compressed bytes read ahead of it.
FEED = 64 * 1024

# Finder and resource-fork litter that macOS puts in zips: harmless, and never part of a model.
_LITTER_DIRS = {"__MACOSX"}
_LITTER_NAMES = {".DS_Store"}
_NESTED_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".tar.gz", ".7z", ".rar", ".xz", ".bz2", ".zst")


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_total_bytes: int
    max_ratio: float = 100.0
    zip_threads: int = 2

    @property
    def max_entries(self) -> int:
        """Headers of any kind (files, folders, skipped litter): each costs memory and time to read."""
        return 4 * self.max_members + 64


def shown(name: str) -> str:
    """A member name for a message: quoted, and cut short when it is very long."""
    return repr(name) if len(name) <= 80 else f"{name[:60]!r}… ({len(name.encode('utf-8', 'replace'))} bytes)"


def safe_member_path(name: str) -> str | None:
    """The normalised relative path of a member, ``None`` for litter; raises for unsafe names."""
    try:
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveRejected(f"archive member {name!r} has a name that is not valid UTF-8") from None
    if "\\" in name or "\x00" in name:
        raise ArchiveRejected(f"archive member {shown(name)} has a backslash or NUL in its name")
    if name.startswith("/"):
        raise ArchiveRejected(f"archive member {shown(name)} has an absolute path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise ArchiveRejected(f"archive member {shown(name)} points outside the archive ('..')")
    _check_length(name, encoded, parts)
    if not parts or parts[0] in _LITTER_DIRS or parts[-1] in _LITTER_NAMES or parts[-1].startswith("._"):
        return None
    rel = "/".join(parts)
    if rel.lower().endswith(_NESTED_ARCHIVE_SUFFIXES):
        raise ArchiveRejected(f"archive member {shown(name)} is itself an archive; nested archives are refused")
    return rel


def _check_length(name: str, encoded: bytes, parts: list[str]) -> None:
    """Refused here, by rule, instead of surfacing later as an OS error (ENAMETOOLONG) mid-extraction."""
    longest = max((len(p.encode("utf-8")) for p in parts), default=0)
    if longest > MAX_COMPONENT_BYTES:
        raise ArchiveRejected(
            f"archive member {shown(name)} has a folder or file name of {longest} bytes; "
            f"at most {MAX_COMPONENT_BYTES} bytes are allowed per name"
        )
    if len(encoded) > MAX_PATH_BYTES:
        raise ArchiveRejected(
            f"archive member {shown(name)} has a path of {len(encoded)} bytes; at most {MAX_PATH_BYTES} are allowed"
        )


def same_file_key(path: str) -> str:
    """One key for the names a case-insensitive, Unicode-normalising filesystem would store as one file:
    ``Config.json`` and ``config.json``, ``é`` composed (NFC) and decomposed (NFD)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def check_member_ratio(name: str, unpacked: int, packed: int, max_ratio: float) -> None:
    """One zip member against its own compressed size (tar.gz has no per-member compressed size)."""
    if unpacked > RATIO_GRACE_BYTES and unpacked > max_ratio * max(packed, 1):
        raise ArchiveRejected(
            f"archive member {shown(name)} inflates more than {max_ratio:g}x its compressed size "
            "(a decompression bomb?)"
        )


class Budget:
    """Counts entries, files and bytes across one whole archive and holds them to ``Limits``.

    ``packed`` says how many archive bytes have been read so far (the whole archive's size for the
    directory-first zip reader). Thread-safe: the directory-first zip reader writes members in parallel,
    and ``stop`` ends the other threads' work as soon as one of them refuses the archive.
    """

    def __init__(self, limits: Limits, packed: Callable[[], int]) -> None:
        self.limits, self.packed = limits, packed
        self.entries = self.members = self.declared = self.unpacked = self.total = 0
        self._files: dict[str, str] = {}  # same_file_key -> the name as the archive spells it
        self._folders: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stopped = False

    def entry(self) -> None:
        """Any header at all: a file, a folder, skipped litter."""
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise ArchiveRejected(
                f"the archive holds more than {self.limits.max_entries} entries (files, folders and litter)"
            )

    def admit(self, rel: str, declared_size: int) -> None:
        """A file about to be written: its name, the file count, and the sizes headers declare so far."""
        with self._lock:
            self._claim_name(rel)
            self.members += 1
            self.declared += declared_size
        if self.members > self.limits.max_members:
            raise ArchiveRejected(f"the archive holds more than {self.limits.max_members} files")
        if self.declared > self.limits.max_total_bytes:
            raise _too_big(rel, self.limits.max_total_bytes)

    def unpack(self, n: int, rel: str | None) -> None:
        """``n`` more unpacked bytes, written or skipped: the ratio of the whole archive so far."""
        with self._lock:
            self._check_stopped()
            self.unpacked += n
            packed = self.packed()
            if self.unpacked > RATIO_GRACE_BYTES and self.unpacked > self.limits.max_ratio * max(packed, 1):
                where = f"archive member {shown(rel)}: " if rel else ""
                raise ArchiveRejected(
                    f"{where}the archive inflates more than {self.limits.max_ratio:g}x its size "
                    f"({self.unpacked} bytes unpacked from {packed}; a decompression bomb?)"
                )

    def add(self, n: int, rel: str) -> None:
        """``n`` more bytes written to staging."""
        with self._lock:
            self._check_stopped()
            self.total += n
            if self.total > self.limits.max_total_bytes:
                raise _too_big(rel, self.limits.max_total_bytes)

    def stop(self) -> None:
        self._stopped = True

    def _check_stopped(self) -> None:
        if self._stopped:
            raise ExtractionStopped("stopped: another member of this archive was refused")

    def _claim_name(self, rel: str) -> None:
        parts = rel.split("/")
        for folder in ("/".join(parts[:i]) for i in range(1, len(parts))):
            key = same_file_key(folder)
            if key in self._files:
                raise _clash(self._files[key], folder)
            if self._folders.setdefault(key, folder) != folder:
                raise _clash(self._folders[key], folder)
        key = same_file_key(rel)
        earlier = self._files.get(key) or self._folders.get(key)
        if earlier is not None:
            raise _clash(earlier, rel)
        self._files[key] = rel


def _clash(earlier: str, later: str) -> ArchiveRejected:
    if earlier == later:
        return ArchiveRejected(f"archive member {shown(later)} appears more than once (or as a file and a folder)")
    if unicodedata.normalize("NFC", earlier) == unicodedata.normalize("NFC", later):
        # They print alike: show the code points, and say how they differ.
        names = f"{earlier!a} and {later!a} (one name in two Unicode spellings: composed and decomposed)"
    else:
        names = f"{shown(earlier)} and {shown(later)}"
    return ArchiveRejected(
        f"archive members {names} would be the same file on a case-insensitive or Unicode-normalising "
        "filesystem (macOS, Windows); rename one of them"
    )


def _too_big(rel: str, limit: int) -> ArchiveRejected:
    return ArchiveRejected(f"archive member {shown(rel)} takes the unpacked size past {limit} bytes")
