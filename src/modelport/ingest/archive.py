"""Safe, streaming extraction of one user archive (.zip, .tar, .tar.gz) into the staging tree.

- tar and tar.gz are read in one forward pass straight from the source stream: gzip is inflated by
  ISA-L (``isal``), tar headers are parsed as they arrive, and a second thread hashes and writes
  each member while the first keeps inflating.
- zip is streamed the same way from its local headers, and its central directory (at the end) must
  agree with what was extracted (``zipstream``). The one layout that cannot be streamed falls back to
  reading the directory first from a seekable source (HTTP ranges or a file), checking every entry
  before anything is written, then extracting members in parallel.

Any unsafe member rejects the whole archive, naming the member; the caller deletes the staging tree.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import itertools
import queue
import shutil
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Protocol, cast

from isal import igzip_lib, igzip_threaded

from modelport.errors import ArchiveRejected, StagingFull
from modelport.ingest import zipstream
from modelport.ingest.staging import CHUNK, StagedFile

# Finder and resource-fork litter that macOS puts in zips: harmless, and never part of a model.
_LITTER_DIRS = {"__MACOSX"}
_LITTER_NAMES = {".DS_Store"}
_NESTED_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".tar.gz", ".7z", ".rar", ".xz", ".bz2", ".zst")
_CORRUPT_TAR: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    cast(type[BaseException], igzip_lib.IsalError),  # untyped in isal's stubs
)
# Below this many inflated bytes the ratio check stays quiet: small, very compressible JSON is normal.
_RATIO_GRACE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Limits:
    max_members: int
    max_total_bytes: int
    max_ratio: float = 100.0
    zip_threads: int = 2


@dataclass
class Extracted:
    files: list[StagedFile]
    flattened_from: str | None = None


def detect_format(head: bytes) -> str:
    """Recognise the archive by its first bytes (at least 262 for tar), never by its name."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "tar.gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    raise ArchiveRejected("the source is not a .zip, .tar or .tar.gz archive (checked by content, not by name)")


def extract_file(archive: Path, dest: Path, limits: Limits) -> Extracted:
    """Extract a local archive file (direct uploads, tests)."""
    with open(archive, "rb") as f:
        fmt = detect_format(f.read(512))
    if fmt == "zip":
        with open(archive, "rb") as f:
            try:
                return extract_zip_stream(f, dest, limits)
            except zipstream.NeedsRandomAccess:
                shutil.rmtree(dest, ignore_errors=True)
        return extract_zip(file_opener(archive), dest, limits)
    with open(archive, "rb") as f:
        return extract_tar(f, fmt == "tar.gz", dest, limits)


def file_opener(path: Path) -> Callable[[], IO[bytes]]:
    """A zip source over a local file: each call opens a new handle, closed by its reader."""

    def opener() -> IO[bytes]:
        return open(path, "rb")

    return opener


def safe_member_path(name: str) -> str | None:
    """The normalised relative path of a member, ``None`` for litter; raises for unsafe names."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ArchiveRejected(f"archive member {name!r} has a name that is not valid UTF-8") from None
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
    """Counts members and bytes across the whole archive; thread-safe for parallel zip extraction."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.members = 0
        self.total = 0
        self.seen: set[str] = set()
        self.folders: set[str] = set()
        self._lock = threading.Lock()

    def admit(self, rel: str, declared_size: int) -> None:
        parents = ["/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)]
        if rel in self.seen or rel in self.folders or any(p in self.seen for p in parents):
            raise ArchiveRejected(f"archive member {rel!r} appears more than once (or as a file and a folder)")
        self.seen.add(rel)
        self.folders.update(parents)
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveRejected(f"the archive holds more than {self.limits.max_members} files")
        if self.total + declared_size > self.limits.max_total_bytes:
            raise ArchiveRejected(
                f"archive member {rel!r} takes the unpacked size past {self.limits.max_total_bytes} bytes"
            )

    def add(self, n: int, rel: str) -> None:
        with self._lock:
            self.total += n
            if self.total > self.limits.max_total_bytes:
                raise ArchiveRejected(
                    f"archive member {rel!r} takes the unpacked size past {self.limits.max_total_bytes} bytes"
                )


@contextlib.contextmanager
def _disk_full_is_clear(rel: str) -> Iterator[None]:
    """ENOSPC must not read as a corrupt archive: say what filled up and where."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StagingFull(
                f"no space left in the staging area while writing archive member {rel!r}; "
                "free disk space or lower the upload size"
            ) from None
        raise


def _copy_member(src: IO[bytes], rel: str, dest: Path, budget: _Budget) -> StagedFile:
    with _disk_full_is_clear(rel):
        return _copy(src, rel, dest, budget)


def _copy(src: IO[bytes], rel: str, dest: Path, budget: _Budget) -> StagedFile:
    local = dest / rel
    local.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(local, "wb") as out:
        while chunk := src.read(CHUNK):
            budget.add(len(chunk), rel)
            size += len(chunk)
            digest.update(chunk)
            out.write(chunk)
    return StagedFile(rel, size, digest.hexdigest(), local)


# ---- tar ------------------------------------------------------------------------------------------------


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Counting(io.RawIOBase):
    """Counts the compressed bytes consumed, for the compression-ratio guard."""

    def __init__(self, raw: Reader) -> None:
        super().__init__()
        self.raw, self.count = raw, 0

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n

    def readable(self) -> bool:
        return True


class _Sink:
    """Hashes and writes members on its own thread, so inflating and hashing overlap."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.files: list[StagedFile] = []
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=16)  # bounded: ~16 MiB in flight
        self._error: BaseException | None = None
        self._rel, self._digest, self._size = "", hashlib.sha256(), 0
        self._out: IO[bytes] = io.BytesIO()
        self._thread = threading.Thread(target=self._run, name="archive-sink", daemon=True)
        self._thread.start()

    def put(self, op: str, value: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put((op, value))

    def _run(self) -> None:
        while True:
            op, value = self._queue.get()
            if op == "stop":
                return
            if self._error is not None:
                continue  # keep draining so the reading thread never blocks on a full queue
            try:
                with _disk_full_is_clear(self._rel):
                    self._apply(op, value)
            except BaseException as e:  # re-raised in the reading thread by put()/finish()
                self._error = e
                with contextlib.suppress(OSError):
                    self._out.close()

    def _apply(self, op: str, value: Any) -> None:
        if op == "open":
            self._rel, self._digest, self._size = value, hashlib.sha256(), 0
            (self.dest / self._rel).parent.mkdir(parents=True, exist_ok=True)
            self._out = open(self.dest / self._rel, "wb")  # noqa: SIM115 - closed on "close"
        elif op == "data":
            self._digest.update(value)
            self._out.write(value)
            self._size += len(value)
        elif op == "close":
            self._out.close()
            self.files.append(StagedFile(self._rel, self._size, self._digest.hexdigest(), self.dest / self._rel))

    def finish(self) -> list[StagedFile]:
        self._queue.put(("stop", None))
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.files


def extract_tar(raw: Reader, gzipped: bool, dest: Path, limits: Limits) -> Extracted:
    budget = _Budget(limits)
    counted = _Counting(raw)
    stream: IO[bytes]
    if gzipped:
        # Inflate on isal's own thread, overlapping tar parsing here and hashing in the sink.
        stream = cast(IO[bytes], igzip_threaded.open(counted, "rb", threads=1))  # type: ignore[no-untyped-call]
    else:
        stream = io.BufferedReader(counted, CHUNK)
    sink = _Sink(dest)
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
            for member in tar:
                _tar_member(tar, member, sink, budget, counted if gzipped else None)
    except _CORRUPT_TAR as e:
        sink.finish()
        raise ArchiveRejected(f"the tar archive is corrupt or truncated: {type(e).__name__}") from None
    except BaseException:
        sink.finish()
        raise
    files = sink.finish()
    return _finish(files)


def _tar_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, sink: _Sink, budget: _Budget, compressed: _Counting | None
) -> None:
    rel = safe_member_path(member.name)
    if member.isdir() or rel is None:
        return
    if not member.isreg():
        raise ArchiveRejected(
            f"archive member {member.name!r} is a {_tar_kind(member)}; only regular files are allowed"
        )
    budget.admit(rel, member.size)
    src = tar.extractfile(member)
    assert src is not None
    sink.put("open", rel)
    while chunk := src.read(CHUNK):
        budget.add(len(chunk), rel)
        if compressed is not None:
            _check_ratio(budget.total, compressed.count, budget.limits.max_ratio, rel)
        sink.put("data", chunk)
    sink.put("close", None)


def _check_ratio(inflated: int, compressed: int, max_ratio: float, rel: str) -> None:
    if inflated > _RATIO_GRACE_BYTES and inflated > max_ratio * max(compressed, 1):
        raise ArchiveRejected(
            f"archive member {rel!r}: the archive inflates more than {max_ratio:g}x (a decompression bomb?)"
        )


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


# ---- zip, streamed -------------------------------------------------------------------------------------


def extract_zip_stream(raw: Reader, dest: Path, limits: Limits) -> Extracted:
    """One forward pass over a zip (see ``zipstream``); raises ``NeedsRandomAccess`` for the rare layout
    that cannot be streamed."""
    budget = _Budget(limits)
    inp = zipstream.Input(raw)
    sink = _Sink(dest)
    seen: dict[str, tuple[int, int]] = {}
    try:
        while True:
            signature = inp.exact(4, "a header")
            if signature == zipstream.LOCAL:
                _zip_stream_member(inp, sink, budget, seen)
            elif signature == zipstream.CENTRAL or signature in zipstream.ENDS:
                inp.push(signature)
                directory = zipstream.read_directory(inp)
                zipstream.check_directory(directory, seen)
                for name, entry in directory.items():
                    _check_zip_mode(name, entry.mode)
                break
            else:
                raise ArchiveRejected("the zip archive is corrupt (unexpected bytes between members)")
    except BaseException:
        sink.finish()
        raise
    return _finish(sink.finish())


def _zip_stream_member(inp: zipstream.Input, sink: _Sink, budget: _Budget, seen: dict[str, tuple[int, int]]) -> None:
    entry, zip64 = zipstream.read_local_header(inp)
    if entry.name in seen:
        raise ArchiveRejected(f"archive member {entry.name!r} appears more than once")
    reader = zipstream.MemberReader(inp, entry, zip64)
    rel = None if entry.name.endswith("/") else safe_member_path(entry.name)
    if rel is not None:
        budget.admit(rel, 0 if reader.descriptor else entry.usize)
        sink.put("open", rel)
    for chunk in reader.chunks():
        if rel is not None:
            budget.add(len(chunk), rel)
            _check_ratio(reader.size, reader.consumed, budget.limits.max_ratio, rel)
            sink.put("data", chunk)
    if rel is not None:
        sink.put("close", None)
    seen[entry.name] = (reader.size, reader.crc & 0xFFFFFFFF)


# ---- zip, directory first -------------------------------------------------------------------------------


def extract_zip(open_source: Callable[[], IO[bytes]], dest: Path, limits: Limits) -> Extracted:
    """``open_source`` returns a new seekable reader each call: one per extraction thread."""
    budget = _Budget(limits)
    try:
        with open_source() as src, zipfile.ZipFile(src) as zf:
            plan = _plan_zip(zf.infolist(), budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise ArchiveRejected(f"the zip archive is corrupt or unsupported: {type(e).__name__}") from None
    if not plan:
        return _finish([])
    threads = max(1, min(limits.zip_threads, len(plan)))
    batches = [plan[i::threads] for i in range(threads)]
    with ThreadPoolExecutor(threads, thread_name_prefix="unzip") as pool:
        results = list(pool.map(lambda batch: _unzip_batch(open_source, batch, dest, budget), batches))
    return _finish([f for batch in results for f in batch])


def _zip_name(info: zipfile.ZipInfo) -> str:
    """Zip names without the UTF-8 flag are cp437 by the spec, but Unix tools write UTF-8 there."""
    if info.flag_bits & 0x800 or info.filename.isascii():
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except UnicodeDecodeError:
        raise ArchiveRejected(f"archive member {info.filename!r} has a name that is not valid UTF-8") from None


def _check_zip_mode(name: str, mode: int) -> None:
    """Unix-made zips keep st_mode in the directory; file type bits of 0 mean "plain file"."""
    file_type = stat.S_IFMT(mode)
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveRejected(f"archive member {name!r} is not a regular file")


def _plan_zip(infos: list[zipfile.ZipInfo], budget: _Budget) -> list[tuple[zipfile.ZipInfo, str]]:
    plan = []
    for info in infos:
        name = _zip_name(info)
        rel = safe_member_path(name)
        if info.is_dir() or rel is None:
            continue
        _check_zip_mode(name, info.external_attr >> 16)
        if info.file_size > _RATIO_GRACE_BYTES and info.file_size > budget.limits.max_ratio * max(
            info.compress_size, 1
        ):
            raise ArchiveRejected(
                f"archive member {name!r} inflates more than {budget.limits.max_ratio:g}x (a decompression bomb?)"
            )
        budget.admit(rel, info.file_size)
        plan.append((info, rel))
    _check_no_overlap([info for info, _ in plan])
    return plan


def _check_no_overlap(infos: list[zipfile.ZipInfo]) -> None:
    """Overlapping entries (one compressed stream shared by many names) are a classic zip bomb."""
    spans = sorted(
        ((i.header_offset, i.header_offset + 30 + len(i.orig_filename.encode()) + i.compress_size, i) for i in infos),
        key=lambda span: span[:2],
    )
    for (start_a, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a or start_a == start_b:
            raise ArchiveRejected(
                f"archive members {a.filename!r} and {b.filename!r} overlap in the file "
                "(an overlapping-entry zip bomb?)"
            )


def _unzip_batch(
    open_source: Callable[[], IO[bytes]],
    batch: list[tuple[zipfile.ZipInfo, str]],
    dest: Path,
    budget: _Budget,
) -> list[StagedFile]:
    files = []
    try:
        with open_source() as src, zipfile.ZipFile(src) as zf:
            for info, rel in batch:
                with zf.open(info) as member:
                    files.append(_copy_member(member, rel, dest, budget))
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as e:
        raise ArchiveRejected(f"the zip archive is corrupt or unsupported: {type(e).__name__}") from None
    return files


# ---- both -----------------------------------------------------------------------------------------------


def _finish(files: list[StagedFile]) -> Extracted:
    if not files:
        raise ArchiveRejected("the archive contains no files")
    return _flatten(sorted(files, key=lambda f: f.path))


def _flatten(files: list[StagedFile]) -> Extracted:
    """Accept archives whose files all sit in one wrapping folder, as users often make them."""
    tops = {f.path.split("/", 1)[0] for f in files}
    if len(tops) != 1 or any("/" not in f.path for f in files):
        return Extracted(files)
    top = tops.pop()
    return Extracted(
        [StagedFile(f.path.split("/", 1)[1], f.size, f.sha256, f.local) for f in files], flattened_from=top
    )
