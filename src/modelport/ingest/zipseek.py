"""A zip read from a seekable source (HTTP ranges or a file): the directory-first reader's view, held to
the same layout as the stream (``zipstream``), so that both readers, ``unzip`` and ``zipfile`` all see the
same files.

Everything the directory allows is checked before a byte is written: one end record that reaches the
end of the file through its comment, the directory right before it, the first member at byte 0, no
overlapping members. Each member's local header is then checked against its directory entry just before
its data is read, and its record (header, data, descriptor) must end exactly where the next member, or
the directory, begins: no gaps for another archive to hide in.
"""

from __future__ import annotations

import itertools
from typing import IO

from modelport.errors import ArchiveRejected
from modelport.ingest.zipstream import (
    END,
    END64_SIZE,
    END_SIZE,
    LOCAL,
    LOCATOR64,
    LOCATOR64_SIZE,
    DirectoryEntry,
    End,
    Entry,
    Input,
    MemberReader,
    parse_end,
    prepended_error,
    read_central,
    read_descriptor,
    read_local_header,
    second_end_error,
)


def read_directory(src: IO[bytes], most: int) -> tuple[dict[str, DirectoryEntry], int]:
    """The directory of a seekable zip and its offset, with every check that needs no member's data: one
    end record reaching the end of the file, the directory right before it, the first member at byte 0,
    members that do not overlap. The rest is checked member by member (``open_member``)."""
    end, records = _locate_end(src)
    if end.offset + end.size != records:
        raise prepended_error()
    if end.entries > most:
        raise ArchiveRejected(f"the zip's directory lists more than {most} entries")
    src.seek(end.offset)
    directory = read_central(Input(src), most)
    if directory.records - directory.start != end.size or end.entries != len(directory.entries):
        raise prepended_error()
    _check_spans(directory.entries)
    return directory.entries, end.offset


def _locate_end(src: IO[bytes]) -> tuple[End, int]:
    """The end records and where they begin. The end record must reach the end of the file through its
    comment and be the only one there: then it is the one ``unzip`` and ``zipfile`` pick too."""
    size = src.seek(0, 2)
    tail_at = max(0, size - (END_SIZE + 0xFFFF))
    src.seek(tail_at)
    tail = src.read()
    found = [i for i in _all(tail, END) if i + END_SIZE + _u16(tail, i + 20) == len(tail)]
    if not found:
        raise ArchiveRejected("the zip does not end with its end-of-directory record (data appended after it?)")
    if len(found) > 1:
        raise second_end_error()
    records = end_at = tail_at + found[0]
    if end_at >= LOCATOR64_SIZE:
        src.seek(end_at - LOCATOR64_SIZE)
        if src.read(4) == LOCATOR64:
            records = end_at - LOCATOR64_SIZE - END64_SIZE
    if records < 0:
        raise prepended_error()
    src.seek(records)
    end, _ = parse_end(src.read(size - records), 0)
    if end.zip64_at not in (None, records):
        raise prepended_error()
    return end, records


def _check_spans(entries: dict[str, DirectoryEntry]) -> None:
    """Overlapping entries (one compressed stream shared by many names) are a classic zip bomb; the first
    member must start at byte 0 (else something was put in front of the zip)."""
    spans = sorted((e.offset, e.offset + 30 + len(name.encode()) + e.csize, name) for name, e in entries.items())
    if spans and spans[0][0] != 0:
        raise prepended_error()
    for (start_a, end_a, a), (start_b, _, b) in itertools.pairwise(spans):
        if start_b < end_a or start_a == start_b:
            raise ArchiveRejected(
                f"archive members {a!r} and {b!r} overlap in the file (an overlapping-entry zip bomb?)"
            )


def extents(entries: dict[str, DirectoryEntry], directory_at: int) -> list[tuple[str, DirectoryEntry, int]]:
    """Each member with where the next one (or the directory) begins, in file order."""
    ordered = sorted(entries.items(), key=lambda item: item[1].offset)
    stops = [entry.offset for _, entry in ordered[1:]] + [directory_at]
    return [(name, entry, stop) for (name, entry), stop in zip(ordered, stops, strict=True)]


def open_member(src: IO[bytes], name: str, entry: DirectoryEntry, stop: int) -> tuple[MemberReader, Input]:
    """A reader of one member's data, after its local header was checked against its directory entry and
    its record found to end exactly at ``stop`` (where the next member, or the directory, begins). Sizes
    come from the directory, so stored members with data descriptors need no streaming guesswork; the
    descriptor, if any, is read from the returned ``Input`` after the data (``check_descriptor``)."""
    src.seek(entry.offset)
    inp = Input(src, chunk=4096)
    if inp.read(4) != LOCAL:
        raise _disagrees(name)
    local, zip64 = read_local_header(inp)
    data_at = entry.offset + inp.position
    descriptor = bool(local.flags & 0x8)
    if (local.name, local.method, local.flags & 0x9) != (name, entry.method, entry.flags & 0x9):
        raise _disagrees(name)
    if not descriptor and (local.crc, local.csize, local.usize) != (entry.crc, entry.csize, entry.usize):
        raise _disagrees(name)
    gap = stop - (data_at + entry.csize)
    if gap not in ((20, 24) if descriptor and zip64 else (12, 16) if descriptor else (0,)):
        raise ArchiveRejected(
            f"the zip has {gap} unexplained bytes after member {name!r} (a hidden or concatenated archive?); "
            "other tools would unpack a different set of files"
        )
    data = Input(_Span(src, data_at, stop))
    known = Entry(name, entry.method, entry.flags & ~0x8, entry.crc, entry.csize, entry.usize)
    return MemberReader(data, known, zip64), data


def check_descriptor(reader: MemberReader, data: Input, entry: DirectoryEntry, name: str) -> None:
    if entry.flags & 0x8 and read_descriptor(data, reader.zip64) != (entry.crc, entry.csize, entry.usize):
        raise _disagrees(name)


class _Span:
    """Reads of ``src`` from ``start``, never past ``stop``."""

    def __init__(self, src: IO[bytes], start: int, stop: int) -> None:
        src.seek(start)
        self.src, self.left = src, stop - start

    def read(self, n: int) -> bytes:
        data = self.src.read(min(n, self.left))
        self.left -= len(data)
        return data


def _disagrees(name: str) -> ArchiveRejected:
    return ArchiveRejected(
        f"archive member {name!r}: its local header disagrees with the zip's directory (name, method, flags, "
        "sizes or CRC-32); a zip whose two views disagree is refused"
    )


def _all(data: bytes, needle: bytes) -> list[int]:
    found, at = [], data.find(needle)
    while at >= 0:
        found.append(at)
        at = data.find(needle, at + 1)
    return found


def _u16(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 2], "little") if pos + 2 <= len(data) else -1
