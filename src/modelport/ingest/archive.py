"""Safe, streaming extraction of one user archive (.zip, .tar, .tar.gz) into the staging tree.

- tar and tar.gz are read in one forward pass straight from the source stream: gzip is inflated by
  ISA-L (``isal``), tar headers are parsed as they arrive, and a second thread hashes and writes
  each member while the first keeps inflating.
- zip is streamed the same way from its local headers, and its central directory (at the end) must
  agree with what was extracted (``zipstream``). The one layout that cannot be streamed falls back to
  reading the directory first from a seekable source (HTTP ranges or a file), checking the directory
  before anything is written and each member's local header just before its data, then extracting
  members in parallel. Both readers hold the zip to the same layout, so they cannot disagree.

Names, sizes and ratios are held to the same rules for every format (``members``). Any unsafe member
rejects the whole archive, naming the member, and the extractor removes what it had written (the error's
``staged_bytes`` says how much that was); the caller deletes the rest of its staging tree.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import queue
import shutil
import stat
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

from isal import igzip_lib, igzip_threaded

from modelport.errors import ArchiveRejected, ExtractionStopped, NeedsRandomAccess, StagingFull
from modelport.ingest import layout, zipseek, zipstream
from modelport.ingest.members import FEED, Budget, Limits, check_member_ratio, safe_member_path, shown
from modelport.ingest.staging import CHUNK, StagedFile

__all__ = ["Extracted", "Limits", "detect_format", "extract_file", "extract_tar", "extract_zip", "safe_member_path"]

log = logging.getLogger(__name__)

_CORRUPT_TAR: tuple[type[BaseException], ...] = (
    tarfile.TarError,
    EOFError,
    OSError,
    zlib.error,
    cast(type[BaseException], igzip_lib.IsalError),  # untyped in isal's stubs
)
# tarfile reads PAX headers and GNU long names whole into memory: a name past MAX_PATH_BYTES is refused
# anyway, and no honest archive needs more than this for a member's metadata.
MAX_TAR_EXTENDED_HEADER_BYTES = 2**20
_TAR_EXTENDED = (
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
)


@dataclass
class Extracted:
    files: list[StagedFile]
    flattened_from: str | None = None


def detect_format(head: bytes) -> str:
    """Recognise the archive by its first bytes (``layout.archive_format``), never by its name."""
    fmt = layout.archive_format(head)
    if fmt is not None:
        return fmt
    raise ArchiveRejected("the source is not a .zip, .tar or .tar.gz archive (checked by content, not by name)")


def extract_file(archive: Path, dest: Path, limits: Limits) -> Extracted:
    """Extract a local archive file (direct uploads, tests)."""
    with open(archive, "rb") as f:
        fmt = detect_format(f.read(512))
    if fmt == "zip":
        with open(archive, "rb") as f:
            try:
                return extract_zip_stream(f, dest, limits)
            except NeedsRandomAccess:
                pass
        return extract_zip(file_opener(archive), dest, limits)
    with open(archive, "rb") as f:
        return extract_tar(f, fmt == "tar.gz", dest, limits)


def file_opener(path: Path) -> Callable[[], IO[bytes]]:
    """A zip source over a local file: each call opens a new handle, closed by its reader."""

    def opener() -> IO[bytes]:
        return open(path, "rb")

    return opener


@contextlib.contextmanager
def _nothing_left_on_failure(dest: Path) -> Iterator[None]:
    """A refused archive leaves nothing in staging; the error records how much had been written."""
    try:
        yield
    except BaseException as e:
        staged = _tree_bytes(dest)
        shutil.rmtree(dest, ignore_errors=True)
        if isinstance(e, ArchiveRejected) and not isinstance(e, NeedsRandomAccess):
            e.staged_bytes = staged
            log.info("archive refused after %d bytes were staged (removed): %s", staged, e)
        raise


def _tree_bytes(root: Path) -> int:
    return sum(os.lstat(os.path.join(top, name)).st_size for top, _, names in os.walk(root) for name in names)


@contextlib.contextmanager
def _os_errors_explained(rel: str) -> Iterator[None]:
    """ENOSPC must not read as a corrupt archive: say what filled up and where."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StagingFull(
                f"no space left in the staging area while writing archive member {shown(rel)}; "
                "free disk space or lower the upload size"
            ) from None
        if e.errno == errno.ENAMETOOLONG:  # names are checked first (members.py); this is the backstop
            raise ArchiveRejected(f"archive member {shown(rel)} has a name too long for the staging area") from None
        raise


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
                with contextlib.suppress(OSError):
                    self._out.close()  # a member cut off by a refusal
                return
            if self._error is not None:
                continue  # keep draining so the reading thread never blocks on a full queue
            try:
                with _os_errors_explained(self._rel):
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


# ---- tar ------------------------------------------------------------------------------------------------


class Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class _Counting(io.RawIOBase):
    """Counts the archive bytes read, for the ratio check, ``most`` at a time (``FEED`` for an inflater,
    which would otherwise read megabytes ahead and let a bomb borrow allowance from them)."""

    def __init__(self, raw: Reader, most: int) -> None:
        super().__init__()
        self.raw, self.most, self.count = raw, most, 0

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(min(len(buffer), self.most))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n

    def readable(self) -> bool:
        return True


class _Metered:
    """The unpacked tar stream as tarfile reads it: every byte (headers, padding, skipped members too)
    counts toward the archive's ratio before tarfile sees it."""

    def __init__(self, stream: IO[bytes], budget: Budget) -> None:
        self.stream, self.budget = stream, budget
        self.member: str | None = None

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        self.budget.unpack(len(data), self.member)
        return data


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses, at the header, what tarfile would otherwise read whole into memory before we ever see the
    member: sparse maps (GNU and PAX; a model has no business with sparse files, and a tiny one unpacks
    to any size) and oversized PAX headers and long names.

    ``_proc_member`` is tarfile's hook for subclasses (see the comment above it in tarfile.py). The PAX
    sparse readers are private; if a Python release renames them, ``_tar_member`` still refuses the
    member by ``issparse()`` before any data, and the ratio check bounds what a map can cost.
    """

    def _proc_member(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise _sparse(self.name)
        if self.type in _TAR_EXTENDED:
            held = sum(len(k) + len(v) for k, v in tar.pax_headers.items()) if self.type == tarfile.XGLTYPE else 0
            if self.size + held > MAX_TAR_EXTENDED_HEADER_BYTES:
                raise ArchiveRejected(
                    f"the tar archive has an extended header or long name of {self.size} bytes; "
                    f"at most {MAX_TAR_EXTENDED_HEADER_BYTES} are allowed"
                )
        return cast(tarfile.TarInfo, super()._proc_member(tar))  # type: ignore[misc]

    def _proc_gnusparse_00(self, member: tarfile.TarInfo, *_: object) -> None:
        raise _sparse(member.name)

    def _proc_gnusparse_01(self, member: tarfile.TarInfo, *_: object) -> None:
        raise _sparse(member.name)

    def _proc_gnusparse_10(self, member: tarfile.TarInfo, *_: object) -> None:
        raise _sparse(member.name)


def _sparse(name: str) -> ArchiveRejected:
    return ArchiveRejected(f"archive member {shown(name)} is a sparse file; sparse files are refused in archives")


def extract_tar(raw: Reader, gzipped: bool, dest: Path, limits: Limits) -> Extracted:
    with _nothing_left_on_failure(dest):
        packed = _Counting(raw, FEED if gzipped else CHUNK)
        budget = Budget(limits, lambda: packed.count)
        unpacked: IO[bytes]
        if gzipped:
            # Inflate on isal's own thread, overlapping tar parsing here and hashing in the sink.
            unpacked = cast(IO[bytes], igzip_threaded.open(packed, "rb", threads=1))  # type: ignore[no-untyped-call]
        else:
            unpacked = io.BufferedReader(packed, CHUNK)
        with unpacked:  # closing stops isal's thread, also when the archive is refused half-way
            return _tar_members(_Metered(unpacked, budget), dest, budget)


def _tar_members(stream: _Metered, dest: Path, budget: Budget) -> Extracted:
    sink = _Sink(dest)
    try:
        source = cast(IO[bytes], stream)
        with tarfile.open(fileobj=source, mode="r|", bufsize=CHUNK, tarinfo=_GuardedTarInfo) as tar:
            for member in tar:
                _tar_member(tar, member, sink, budget, stream)
    except _CORRUPT_TAR as e:
        sink.finish()
        raise ArchiveRejected(f"the tar archive is corrupt or truncated: {type(e).__name__}") from None
    except BaseException:
        sink.finish()
        raise
    return _finish(sink.finish())


def _tar_member(tar: tarfile.TarFile, member: tarfile.TarInfo, sink: _Sink, budget: Budget, stream: _Metered) -> None:
    budget.entry()
    stream.member = member.name
    rel = safe_member_path(member.name)
    if member.isdir() or rel is None:
        return
    if member.issparse():
        raise _sparse(member.name)
    if not member.isreg():
        raise ArchiveRejected(
            f"archive member {shown(member.name)} is a {_tar_kind(member)}; only regular files are allowed"
        )
    budget.admit(rel, member.size)
    src = tar.extractfile(member)
    assert src is not None
    sink.put("open", rel)
    while chunk := src.read(CHUNK):
        budget.add(len(chunk), rel)
        sink.put("data", chunk)
    sink.put("close", None)


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
    with _nothing_left_on_failure(dest):
        inp = zipstream.Input(raw)
        budget = Budget(limits, lambda: inp.position)
        sink = _Sink(dest)
        try:
            _zip_stream(inp, sink, budget)
        except BaseException:
            sink.finish()
            raise
        return _finish(sink.finish())


def _zip_stream(inp: zipstream.Input, sink: _Sink, budget: Budget) -> None:
    seen: dict[str, zipstream.Seen] = {}
    while (signature := inp.exact(4, "a header")) == zipstream.LOCAL:
        _zip_stream_member(inp, inp.position - 4, sink, budget, seen)
    if signature != zipstream.CENTRAL and signature not in zipstream.ENDS:
        raise ArchiveRejected(
            f"the zip archive has unexpected bytes at byte {inp.position - 4} (data before, between or after "
            "its members: a prepended or concatenated archive, or corruption)"
        )
    inp.push(signature)
    directory = zipstream.read_central(inp, budget.limits.max_entries)
    zipstream.check_directory(directory, seen)
    for name, entry in directory.entries.items():
        _check_zip_mode(name, entry.mode)


def _zip_stream_member(
    inp: zipstream.Input, offset: int, sink: _Sink, budget: Budget, seen: dict[str, zipstream.Seen]
) -> None:
    entry, zip64 = zipstream.read_local_header(inp)
    budget.entry()
    if entry.name in seen:
        raise ArchiveRejected(f"archive member {shown(entry.name)} appears more than once")
    reader = zipstream.MemberReader(inp, entry, zip64)
    rel = _zip_rel(entry.name)
    if rel is not None:
        budget.admit(rel, 0 if reader.descriptor else entry.usize)
        sink.put("open", rel)
    for chunk in reader.chunks():
        check_member_ratio(entry.name, reader.size, reader.consumed, budget.limits.max_ratio)
        budget.unpack(len(chunk), entry.name)
        if rel is not None:
            budget.add(len(chunk), rel)
            sink.put("data", chunk)
    if rel is not None:
        sink.put("close", None)
    seen[entry.name] = zipstream.Seen(offset, entry.method, reader.consumed, reader.size, reader.crc & 0xFFFFFFFF)


def _zip_rel(name: str) -> str | None:
    """Folder entries are checked like files but never written (folders come from file paths)."""
    rel = safe_member_path(name)
    return None if name.endswith("/") else rel


def _check_zip_mode(name: str, mode: int) -> None:
    """Unix-made zips keep st_mode in the directory; file type bits of 0 mean "plain file"."""
    file_type = stat.S_IFMT(mode)
    if file_type and file_type not in (stat.S_IFREG, stat.S_IFDIR):
        raise ArchiveRejected(f"archive member {shown(name)} is not a regular file")


# ---- zip, directory first -------------------------------------------------------------------------------

_Planned = tuple[str, zipstream.DirectoryEntry, int, str | None]  # name, entry, where its record ends, rel


def extract_zip(open_source: Callable[[], IO[bytes]], dest: Path, limits: Limits) -> Extracted:
    """``open_source`` returns a new seekable reader each call: one per extraction thread."""
    with _nothing_left_on_failure(dest):
        with open_source() as src:
            size = src.seek(0, 2)
            entries, directory_at = zipseek.read_directory(src, limits.max_entries)
        budget = Budget(limits, lambda: size)
        plan = _plan_zip(entries, directory_at, budget)
        threads = max(1, min(limits.zip_threads, len(plan)))
        with ThreadPoolExecutor(threads, thread_name_prefix="unzip") as pool:
            futures = [pool.submit(_unzip_batch, open_source, plan[i::threads], dest, budget) for i in range(threads)]
            errors = [e for e in (f.exception() for f in futures) if e is not None]
        if errors:  # the first real reason, not another thread's "stopped"
            raise next((e for e in errors if not isinstance(e, ExtractionStopped)), errors[0])
        return _finish([f for future in futures for f in future.result()])


def _plan_zip(entries: dict[str, zipstream.DirectoryEntry], directory_at: int, budget: Budget) -> list[_Planned]:
    """Every check the directory allows, before anything is written: names, modes, per-member and
    whole-archive ratios and sizes (the readers never yield more than an entry declares)."""
    plan: list[_Planned] = []
    for name, entry, stop in zipseek.extents(entries, directory_at):
        budget.entry()
        _check_zip_mode(name, entry.mode)
        rel = _zip_rel(name)
        check_member_ratio(name, entry.usize, entry.csize, budget.limits.max_ratio)
        if rel is not None:
            budget.admit(rel, entry.usize)
        plan.append((name, entry, stop, rel))
    budget.unpack(sum(entry.usize for entry in entries.values()), None)
    return plan


def _unzip_batch(
    open_source: Callable[[], IO[bytes]], batch: list[_Planned], dest: Path, budget: Budget
) -> list[StagedFile]:
    files = []
    try:
        with open_source() as src:
            for name, entry, stop, rel in batch:
                reader, data = zipseek.open_member(src, name, entry, stop)
                staged = _unzip_member(reader, rel, dest, budget)
                zipseek.check_descriptor(reader, data, entry, name)
                files += staged
    except (EOFError, OSError) as e:
        budget.stop()
        raise ArchiveRejected(f"the zip archive is corrupt or unsupported: {type(e).__name__}") from None
    except BaseException:
        budget.stop()
        raise
    return files


def _unzip_member(reader: zipstream.MemberReader, rel: str | None, dest: Path, budget: Budget) -> list[StagedFile]:
    if rel is None:
        for _ in reader.chunks():  # litter: checked (CRC-32, sizes) like the stream does, not written
            pass
        return []
    local = dest / rel
    digest = hashlib.sha256()
    with _os_errors_explained(rel):
        local.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "wb") as out:
            for chunk in reader.chunks():
                budget.add(len(chunk), rel)
                digest.update(chunk)
                out.write(chunk)
    return [StagedFile(rel, reader.size, digest.hexdigest(), local)]


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
