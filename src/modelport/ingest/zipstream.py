"""Zip archives read front to back, in one pass, like tar.

Zip keeps its directory at the end, but every entry also has a local header in front of its data, so
the archive can be extracted as it streams in: parse a local header, inflate (ISA-L) or copy its data,
check CRC-32 and size, move on. Entries whose sizes only follow the data (a "data descriptor") are
fine when deflated, since the deflate stream marks its own end. At the end the central directory is
read and must describe exactly what was extracted: a zip whose directory and contents disagree is
rejected. Each byte is read once, so overlapping-entry bombs cannot work here.

An uncompressed entry with a data descriptor has no knowable end when streamed; that rare layout
raises ``NeedsRandomAccess`` so the caller can use the directory-first reader instead.

Every reader of a zip must see the same files, or what we check is not what another tool unpacks. So
both our readers hold a zip to one layout: local records tiling the file from byte 0, the central
directory right after them, one end record (zip64's record and locator before it when present) and its
comment, then the end of the file. Data before the first member or after the end record, a second end
record (also inside the comment), a directory that is not where the end record says, and local headers
that disagree with their directory entry (name, method, sizes, CRC-32, offset) are all refused: those are
the concatenated and prepended zips that ``unzip`` and Python's ``zipfile`` read differently from a
front-to-back reader. ``zipseek`` holds a seekable zip (the directory-first reader) to the same layout.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, cast

from isal import isal_zlib

from modelport.errors import ArchiveRejected, NeedsRandomAccess
from modelport.ingest.members import FEED
from modelport.ingest.staging import CHUNK, ChunkReader

LOCAL, CENTRAL, DESCRIPTOR = b"PK\x03\x04", b"PK\x01\x02", b"PK\x07\x08"
END, END64, LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
ENDS = (END, END64, LOCATOR64)
MAX_DIRECTORY_BYTES = 64 * 2**20
_U32 = 0xFFFFFFFF
END_SIZE, END64_SIZE, LOCATOR64_SIZE = 22, 56, 20
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, cast(type[BaseException], isal_zlib.error))


@dataclass(frozen=True)
class Entry:
    name: str
    method: int
    flags: int
    crc: int
    csize: int
    usize: int


class Input:
    """Exact reads with push-back over a forward-only reader; ``position`` counts the bytes consumed."""

    def __init__(self, raw: Any, chunk: int = CHUNK) -> None:
        self._reader = ChunkReader(lambda: raw.read(chunk))

    @property
    def position(self) -> int:
        return self._reader.position

    def read(self, n: int) -> bytes:
        return self._reader.read(n)

    def exact(self, n: int, what: str) -> bytes:
        data = self._reader.read(n)
        if len(data) != n:
            raise ArchiveRejected(f"the zip archive is truncated (in {what})")
        return data

    def some(self, limit: int = -1) -> bytes:
        return self._reader.read_some(limit)

    def push(self, data: bytes) -> None:
        self._reader.unread(data)


def decode_name(raw: bytes, flags: int) -> str:
    """Names are UTF-8 when flagged; unflagged ones are cp437 by the spec but UTF-8 from Unix tools."""
    if flags & 0x800 or raw.isascii():
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    else:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            pass
    raise ArchiveRejected(f"archive member {raw.decode('utf-8', 'replace')!r} has a name that is not valid UTF-8")


def _zip64_values(extra: bytes, values: tuple[int, ...]) -> tuple[tuple[int, ...], bool]:
    """Values of 0xFFFFFFFF live in the zip64 extra field (id 1), in order: usize, csize, offset."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if kind == 1:
            wide = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            return tuple(wide.pop(0) if value == _U32 and wide else value for value in values), True
        pos += 4 + length
    return values, False


def read_local_header(inp: Input) -> tuple[Entry, bool]:
    """The local header after its signature; the bool says whether it has a zip64 extra field."""
    fields = struct.unpack("<HHHHHIIIHH", inp.exact(26, "a local header"))
    _, flags, method, _, _, crc, csize, usize, name_len, extra_len = fields
    name = decode_name(inp.exact(name_len, "a member name"), flags)
    (usize, csize), zip64 = _zip64_values(inp.exact(extra_len, "a header's extra field"), (usize, csize))
    _check_method(name, flags, method)
    return Entry(name, method, flags, crc, csize, usize), zip64


def _check_method(name: str, flags: int, method: int) -> None:
    if flags & 0x1:
        raise ArchiveRejected(f"archive member {name!r} is encrypted")
    if method not in (0, 8):
        raise ArchiveRejected(
            f"archive member {name!r} uses compression method {method}; only stored and deflate are supported"
        )


class MemberReader:
    """Yields one member's inflated bytes while checking size and CRC-32 at the end.

    ``consumed`` is the member's compressed bytes read so far (exactly its compressed size at the end).
    """

    def __init__(self, inp: Input, entry: Entry, zip64: bool) -> None:
        self.inp, self.entry, self.zip64 = inp, entry, zip64
        self.descriptor = bool(entry.flags & 0x8)
        if self.descriptor and entry.method == 0:
            raise NeedsRandomAccess(f"archive member {entry.name!r} is stored with a data descriptor")
        self.crc, self.size, self.consumed = 0, 0, 0
        self._inflater = isal_zlib.decompressobj(-15) if entry.method == 8 else None
        self._left = None if self.descriptor else entry.csize
        self._tail = b""
        self._ended = False

    def chunks(self) -> Any:
        while True:
            out = self._next()
            if out is None:
                break
            self.crc = isal_zlib.crc32(out, self.crc)
            self.size += len(out)
            if not self.descriptor and self.size > self.entry.usize:
                raise self._mismatch()  # cut off at the declared size, which is what the budget admitted
            yield out
        self._finish()

    def _next(self) -> bytes | None:
        if self._inflater is None:
            if not self._left:
                return None
            data = self.inp.exact(min(self._left, CHUNK), f"member {self.entry.name!r}")
            self._left -= len(data)
            self.consumed += len(data)
            return data
        return self._inflate()

    def _inflate(self) -> bytes | None:
        """Up to ``CHUNK`` inflated bytes, fed ``FEED`` compressed bytes at a time (see ``FEED``)."""
        assert self._inflater is not None
        parts: list[bytes] = []
        size = 0
        while size < CHUNK and not self._ended:
            if self._tail:
                data, self._tail = self._tail, b""
            elif self._inflater.eof:
                self._ended = True
                self.inp.push(self._inflater.unused_data)  # the deflate stream ended: the rest is not ours
                self.consumed -= len(self._inflater.unused_data)
                break
            else:
                data = self._compressed()
                if not data:
                    raise ArchiveRejected(f"the zip archive is truncated (in member {self.entry.name!r})")
            try:
                out = self._inflater.decompress(data, CHUNK - size)
            except _INFLATE_ERRORS as e:
                raise ArchiveRejected(f"archive member {self.entry.name!r} is corrupt: {e}") from None
            self._tail = self._inflater.unconsumed_tail
            parts.append(out)
            size += len(out)
        return b"".join(parts) if size else None

    def _compressed(self) -> bytes:
        if self._left is None:
            data = self.inp.some(FEED)
        else:
            data = self.inp.read(min(self._left, FEED)) if self._left else b""
            self._left -= len(data)
        self.consumed += len(data)
        return data

    def _finish(self) -> None:
        entry = self.entry
        crc, csize, usize = entry.crc, entry.csize, entry.usize
        if self.descriptor:
            crc, csize, usize = read_descriptor(self.inp, self.zip64)
        if self.size != usize or self.consumed != csize or (self.crc & _U32) != crc:
            raise self._mismatch()

    def _mismatch(self) -> ArchiveRejected:
        return ArchiveRejected(
            f"archive member {self.entry.name!r} does not match its recorded size or CRC-32 (corrupt or tampered)"
        )


def read_descriptor(inp: Input, zip64: bool) -> tuple[int, int, int]:
    """(crc, csize, usize) from a data descriptor, whose signature is optional."""
    head = inp.exact(4, "a data descriptor")
    if head != DESCRIPTOR:
        inp.push(head)
    wide = "Q" if zip64 else "I"
    crc, csize, usize = struct.unpack(f"<I{wide}{wide}", inp.exact(20 if zip64 else 12, "a data descriptor"))
    return crc, csize, usize


# ---- the central directory and the end records ---------------------------------------------------------


@dataclass(frozen=True)
class DirectoryEntry:
    usize: int
    crc: int
    mode: int  # st_mode from Unix-made zips (0 otherwise)
    method: int
    csize: int
    offset: int  # of the member's local header
    flags: int


@dataclass(frozen=True)
class End:
    """What the end record (zip64's where present) says about the central directory."""

    entries: int
    size: int
    offset: int
    zip64_at: int | None  # where the zip64 locator says the zip64 end record is


@dataclass(frozen=True)
class Directory:
    entries: dict[str, DirectoryEntry]
    start: int  # stream position where the directory began
    records: int  # stream position where the end records began
    end: End


@dataclass(frozen=True)
class Seen:
    """A member as the stream met it: where its local header was, and what its data really was."""

    offset: int
    method: int
    csize: int
    usize: int
    crc: int


def read_directory(inp: Input) -> dict[str, DirectoryEntry]:
    """Parse the central directory (after the last member) through to the end of the file."""
    return read_central(inp).entries


def read_central(inp: Input, most: int | None = None) -> Directory:
    """The central directory, the end records, the comment, and nothing after them; at most ``most``
    entries (parsed entries cost memory: a 64 MiB directory can name a million files)."""
    start = inp.position
    data = inp.read(MAX_DIRECTORY_BYTES + 1)
    if len(data) > MAX_DIRECTORY_BYTES:
        raise ArchiveRejected("the zip's central directory (and what follows it) is larger than allowed")
    entries, pos = _central_entries(data, most)
    end, stop = parse_end(data, pos)
    if stop != len(data):
        raise trailing_error(len(data) - stop)
    return Directory(entries, start, start + pos, end)


def _central_entries(data: bytes, most: int | None) -> tuple[dict[str, DirectoryEntry], int]:
    entries: dict[str, DirectoryEntry] = {}
    pos = 0
    while data[pos : pos + 4] == CENTRAL:
        if most is not None and len(entries) >= most:
            raise ArchiveRejected(f"the zip's directory lists more than {most} entries")
        if pos + 46 > len(data):
            raise ArchiveRejected("the zip's central directory is truncated")
        (_, _, flags, method, _, _, crc, csize, usize, name_len, extra_len, comment_len, _, _, attr, offset) = (
            struct.unpack_from("<HHHHHHIIIHHHHHII", data, pos + 4)
        )
        name = decode_name(data[pos + 46 : pos + 46 + name_len], flags)
        extra = data[pos + 46 + name_len : pos + 46 + name_len + extra_len]
        (usize, csize, offset), _ = _zip64_values(extra, (usize, csize, offset))
        if name in entries:
            raise ArchiveRejected(f"archive member {name!r} appears more than once in the zip's directory")
        _check_method(name, flags, method)
        entries[name] = DirectoryEntry(usize, crc, attr >> 16, method, csize, offset, flags)
        pos += 46 + name_len + extra_len + comment_len
    return entries, pos


def parse_end(data: bytes, pos: int) -> tuple[End, int]:
    """The end records at ``data[pos:]``; returns what they say and where they (and the comment) stop."""
    zip64: tuple[int, int, int] | None = None
    zip64_at = None
    if data[pos : pos + 4] == END64:
        zip64, zip64_at = _zip64_end(data, pos)
        pos += END64_SIZE + LOCATOR64_SIZE
    if data[pos : pos + 4] != END or pos + END_SIZE > len(data):
        raise ArchiveRejected("the zip's central directory is corrupt (no end record after it)")
    disk, cd_disk, on_disk, entries, size, offset, comment_len = struct.unpack_from("<HHHHIIH", data, pos + 4)
    _one_disk(disk, cd_disk, on_disk, entries)
    comment = data[pos + END_SIZE : pos + END_SIZE + comment_len]
    if len(comment) != comment_len:
        raise ArchiveRejected("the zip is truncated (in its comment)")
    if END in comment:
        raise second_end_error()
    entries, size, offset = zip64 or (entries, size, offset)
    return End(entries, size, offset, zip64_at), pos + END_SIZE + comment_len


def _zip64_end(data: bytes, pos: int) -> tuple[tuple[int, int, int], int]:
    """The zip64 end record (without extensible data, as every writer makes it) and its locator."""
    if pos + END64_SIZE + LOCATOR64_SIZE > len(data):
        raise ArchiveRejected("the zip is truncated (in its zip64 end record)")
    (record_size,) = struct.unpack_from("<Q", data, pos + 4)
    if record_size != END64_SIZE - 12:
        raise ArchiveRejected("the zip's zip64 end record has an unsupported size")
    _, _, disk, cd_disk, on_disk, entries, size, offset = struct.unpack_from("<HHIIQQQQ", data, pos + 12)
    _one_disk(disk, cd_disk, on_disk, entries)
    locator = pos + END64_SIZE
    if data[locator : locator + 4] != LOCATOR64:
        raise ArchiveRejected("the zip's zip64 end record is not followed by its locator")
    disk, zip64_at, disks = struct.unpack_from("<IQI", data, locator + 4)
    _one_disk(disk, 0, 0, 0)
    if disks > 1:
        _one_disk(1, 0, 0, 0)
    return (entries, size, offset), zip64_at


def _one_disk(disk: int, cd_disk: int, on_disk: int, entries: int) -> None:
    if disk or cd_disk or on_disk != entries:
        raise ArchiveRejected("the zip spans several disks (a split archive); join it into one file")


def second_end_error() -> ArchiveRejected:
    return ArchiveRejected(
        "the zip holds more than one end-of-directory record (two archives in one?); other tools would unpack "
        "a different set of files"
    )


def trailing_error(n: int) -> ArchiveRejected:
    return ArchiveRejected(
        f"the zip has {n} bytes after its end-of-directory record (a concatenated archive?); other tools "
        "would unpack a different set of files"
    )


def prepended_error() -> ArchiveRejected:
    return ArchiveRejected(
        "the zip's directory is not where its end record says (data before the first member, or a "
        "prepended or concatenated archive); other tools would unpack a different set of files"
    )


def check_directory(directory: Directory, seen: dict[str, Seen]) -> None:
    """The streamed members against the directory: the same names, offsets, methods, sizes and CRC-32s,
    the directory where the end record says, and as many entries as it says."""
    end = directory.end
    if end.offset != directory.start or end.offset + end.size != directory.records:
        raise prepended_error()
    if end.zip64_at not in (None, directory.records):
        raise prepended_error()
    described = {name: Seen(e.offset, e.method, e.csize, e.usize, e.crc) for name, e in directory.entries.items()}
    differing = sorted(set(described) ^ set(seen)) or sorted(k for k in seen if described.get(k) != seen[k])
    if differing or end.entries != len(described):
        example = f" (e.g. {differing[0]!r})" if differing else ""
        raise ArchiveRejected(
            f"the zip's directory does not match its contents{example}; a zip whose two views disagree is refused"
        )
