"""Zip archives read front to back, in one pass, like tar.

Zip keeps its directory at the end, but every entry also has a local header in front of its data, so
the archive can be extracted as it streams in: parse a local header, inflate (ISA-L) or copy its data,
check CRC-32 and size, move on. Entries whose sizes only follow the data (a "data descriptor") are
fine when deflated, since the deflate stream marks its own end. At the end the central directory is
read and must describe exactly what was extracted: a zip whose directory and contents disagree is
rejected. Each byte is read once, so overlapping-entry bombs cannot work here.

An uncompressed entry with a data descriptor has no knowable end when streamed; that rare layout
raises ``NeedsRandomAccess`` so the caller can use the directory-first reader instead.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any, cast

from isal import isal_zlib

from modelport.errors import ArchiveRejected
from modelport.ingest.staging import CHUNK, ChunkReader

LOCAL, CENTRAL, DESCRIPTOR = b"PK\x03\x04", b"PK\x01\x02", b"PK\x07\x08"
ENDS = (b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07")
MAX_DIRECTORY_BYTES = 64 * 2**20
_U32 = 0xFFFFFFFF
_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error, cast(type[BaseException], isal_zlib.error))


class NeedsRandomAccess(ArchiveRejected):
    pass


@dataclass(frozen=True)
class Entry:
    name: str
    method: int
    flags: int
    crc: int
    csize: int
    usize: int


class Input:
    """Exact reads with push-back over a forward-only reader."""

    def __init__(self, raw: Any) -> None:
        self._reader = ChunkReader(lambda: raw.read(CHUNK))

    def read(self, n: int) -> bytes:
        return self._reader.read(n)

    def exact(self, n: int, what: str) -> bytes:
        data = self._reader.read(n)
        if len(data) != n:
            raise ArchiveRejected(f"the zip archive is truncated (in {what})")
        return data

    def some(self) -> bytes:
        return self._reader.read_some()

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


def _zip64_sizes(extra: bytes, usize: int, csize: int) -> tuple[int, int, bool]:
    """Sizes of 0xFFFFFFFF live in the zip64 extra field (id 1), in that order: usize, csize."""
    pos = 0
    while pos + 4 <= len(extra):
        kind, length = struct.unpack_from("<HH", extra, pos)
        body = extra[pos + 4 : pos + 4 + length]
        if kind == 1:
            values = list(struct.unpack_from(f"<{len(body) // 8}Q", body))
            if usize == _U32 and values:
                usize = values.pop(0)
            if csize == _U32 and values:
                csize = values.pop(0)
            return usize, csize, True
        pos += 4 + length
    return usize, csize, False


def read_local_header(inp: Input) -> tuple[Entry, bool]:
    fields = struct.unpack("<HHHHHIIIHH", inp.exact(26, "a local header"))
    _, flags, method, _, _, crc, csize, usize, name_len, extra_len = fields
    name = decode_name(inp.exact(name_len, "a member name"), flags)
    usize, csize, zip64 = _zip64_sizes(inp.exact(extra_len, "a header's extra field"), usize, csize)
    if flags & 0x1:
        raise ArchiveRejected(f"archive member {name!r} is encrypted")
    if method not in (0, 8):
        raise ArchiveRejected(
            f"archive member {name!r} uses compression method {method}; only stored and deflate are supported"
        )
    return Entry(name, method, flags, crc, csize, usize), zip64


class MemberReader:
    """Yields one member's inflated bytes while checking size and CRC-32 at the end."""

    def __init__(self, inp: Input, entry: Entry, zip64: bool) -> None:
        self.inp, self.entry, self.zip64 = inp, entry, zip64
        self.descriptor = bool(entry.flags & 0x8)
        if self.descriptor and entry.method == 0:
            raise NeedsRandomAccess(f"archive member {entry.name!r} is stored with a data descriptor")
        self.crc, self.size, self.consumed = 0, 0, 0
        self._inflater = isal_zlib.decompressobj(-15) if entry.method == 8 else None
        self._left = None if self.descriptor else entry.csize
        self._tail = b""

    def chunks(self) -> Any:
        while True:
            out = self._next()
            if out is None:
                break
            self.crc = isal_zlib.crc32(out, self.crc)
            self.size += len(out)
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
        assert self._inflater is not None
        while True:
            if self._tail:
                data, self._tail = self._tail, b""
            elif self._inflater.eof:
                self.inp.push(self._inflater.unused_data)
                return None
            else:
                data = self._compressed()
                if not data:
                    raise ArchiveRejected(f"the zip archive is truncated (in member {self.entry.name!r})")
            try:
                out = self._inflater.decompress(data, CHUNK)
            except _INFLATE_ERRORS as e:
                raise ArchiveRejected(f"archive member {self.entry.name!r} is corrupt: {e}") from None
            self._tail = self._inflater.unconsumed_tail
            if out:
                return bytes(out)

    def _compressed(self) -> bytes:
        if self._left is None:
            data = self.inp.some()
        else:
            data = self.inp.read(min(self._left, CHUNK)) if self._left else b""
            self._left -= len(data)
        self.consumed += len(data)
        return data

    def _finish(self) -> None:
        entry = self.entry
        crc, usize = entry.crc, entry.usize
        if self.descriptor:
            head = self.inp.exact(4, "a data descriptor")
            if head != DESCRIPTOR:
                self.inp.push(head)
            width = 8 if self.zip64 else 4
            crc, _, usize = struct.unpack(
                f"<I{'Q' if width == 8 else 'I'}{'Q' if width == 8 else 'I'}",
                self.inp.exact(4 + 2 * width, "a data descriptor"),
            )
        if self.size != usize or (self.crc & _U32) != crc:
            raise ArchiveRejected(
                f"archive member {entry.name!r} does not match its recorded size or CRC-32 (corrupt or tampered)"
            )


@dataclass(frozen=True)
class DirectoryEntry:
    usize: int
    crc: int
    mode: int  # st_mode from Unix-made zips (0 otherwise)


def read_directory(inp: Input) -> dict[str, DirectoryEntry]:
    """Parse the central directory (after the last member)."""
    data = inp.read(MAX_DIRECTORY_BYTES + 1)
    if len(data) > MAX_DIRECTORY_BYTES:
        raise ArchiveRejected("the zip's central directory is larger than allowed")
    entries: dict[str, DirectoryEntry] = {}
    pos = 0
    while data[pos : pos + 4] == CENTRAL:
        if pos + 46 > len(data):
            raise ArchiveRejected("the zip's central directory is truncated")
        (_, _, flags, _, _, _, crc, csize, usize, name_len, extra_len, comment_len, _, _, attr) = struct.unpack_from(
            "<HHHHHHIIIHHHHHI", data, pos + 4
        )
        name = decode_name(data[pos + 46 : pos + 46 + name_len], flags)
        extra = data[pos + 46 + name_len : pos + 46 + name_len + extra_len]
        usize, _, _ = _zip64_sizes(extra, usize, csize)
        if name in entries:
            raise ArchiveRejected(f"archive member {name!r} appears more than once in the zip's directory")
        entries[name] = DirectoryEntry(usize, crc, attr >> 16)
        pos += 46 + name_len + extra_len + comment_len
    if data[pos : pos + 4] not in ENDS:
        raise ArchiveRejected("the zip's central directory is corrupt")
    return entries


def check_directory(directory: dict[str, DirectoryEntry], seen: dict[str, tuple[int, int]]) -> None:
    described = {name: (e.usize, e.crc) for name, e in directory.items()}
    if described != seen:
        differing = sorted(set(described) ^ set(seen)) or sorted(k for k in seen if described.get(k) != seen[k])
        raise ArchiveRejected(
            f"the zip's directory does not match its contents (e.g. {differing[0]!r}); "
            "a zip whose two views disagree is refused"
        )
