"""The file names inside an uploaded archive, read from its headers alone: cheap enough for submission.

Only what needs no inflating: an uncompressed tar's headers (each read seeks past its member's data) and
a zip's central directory. A ``.tar.gz`` would have to be inflated whole, so it is left to the job.
``None`` means "not known here" and never "refused": an archive this cannot read (too many members, a
header that does not parse, an unusual layout) goes on to the job, whose checks have the last word.
Reads are bounded: 512 bytes a tar header, 64 KiB a long name, the zip directory's own size limit.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from modelport.errors import ArchiveRejected
from modelport.ingest import zipstream
from modelport.ingest.archive import detect_format

BLOCK = 512
MAX_NAME_BYTES = 64 * 1024  # a GNU long name or PAX header larger than this is not worth reading here
_TAR_FILES = (b"0", b"\0", b"7")  # regular files; links, folders and devices hold no model file
_EOCD, _EOCD64, _LOCATOR64 = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"


def member_names(path: Path, max_members: int) -> list[str] | None:
    try:
        with open(path, "rb") as f:
            fmt = detect_format(f.read(BLOCK))
            if fmt == "tar":
                return _tar_names(f, max_members)
            if fmt == "zip":
                return _zip_names(f, max_members)
    except (ArchiveRejected, OSError, ValueError, struct.error, UnicodeDecodeError):
        return None
    return None


# --- tar -----------------------------------------------------------------------------------------------
def _tar_names(f: BinaryIO, max_members: int) -> list[str] | None:
    names: list[str] = []
    pax: dict[str, str]
    offset, pax = 0, {}
    while len(names) <= max_members:
        f.seek(offset)
        header = f.read(BLOCK)
        if len(header) < BLOCK or header == bytes(BLOCK):
            return names
        _check_sum(header)
        kind, size = header[156:157], _number(header[124:136])
        if kind in (b"x", b"L"):  # PAX header or GNU long name: they describe the next member
            if size > MAX_NAME_BYTES:
                return None
            data = f.read(size)
            pax |= _pax(data) if kind == b"x" else {"path": data.rstrip(b"\0").decode()}
        elif kind not in (b"g", b"K"):  # a global header or a long link name says nothing of names
            if kind in _TAR_FILES:
                names.append(pax.get("path") or _ustar_name(header))
            size = int(pax.get("size", size))  # PAX carries sizes past the header's 8 GiB
            pax = {}
        offset += BLOCK + -(-size // BLOCK) * BLOCK
    return None


def _check_sum(header: bytes) -> None:
    stored = _number(header[148:156])
    if stored != sum(header[:148]) + 8 * 32 + sum(header[156:]):
        raise ValueError("not a tar header")


def _number(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256, for sizes the octal field cannot hold
        return int.from_bytes(field[1:], "big")
    digits = field.replace(b"\0", b" ").strip()
    return int(digits, 8) if digits else 0


def _ustar_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0].decode()
    prefix = header[345:500].split(b"\0", 1)[0].decode() if header[257:262] == b"ustar" else ""
    return f"{prefix}/{name}" if prefix else name


def _pax(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records, each prefixed with its own length."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        length = int(data[pos : data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1 : pos + length - 1].partition(b"=")
        records[key.decode()] = value.decode()
        pos += length
    return records


# --- zip -----------------------------------------------------------------------------------------------
def _zip_names(f: BinaryIO, max_members: int) -> list[str] | None:
    count, size, start = _zip_directory(f)
    if count > max_members or size > zipstream.MAX_DIRECTORY_BYTES:
        return None
    f.seek(start)
    directory = zipstream.read_directory(zipstream.Input(f))
    return [name for name in directory if not name.endswith("/")]


def _zip_directory(f: BinaryIO) -> tuple[int, int, int]:
    """(entries, size, offset) of the central directory, from the end record (zip64's when present)."""
    end = f.seek(0, 2)
    tail_start = max(0, end - (22 + 65535))  # the end record, then a comment of at most 64 KiB
    f.seek(tail_start)
    tail = f.read()
    at = tail.rfind(_EOCD)
    if at < 0:
        raise ValueError("no end of central directory")
    count, size, start = struct.unpack_from("<HII", tail, at + 10)
    if 0xFFFF not in (count,) and 0xFFFFFFFF not in (size, start):
        return count, size, start
    locator = tail[at - 20 : at]
    if at < 20 or not locator.startswith(_LOCATOR64):
        raise ValueError("zip64 locator missing")
    f.seek(struct.unpack_from("<Q", locator, 8)[0])
    record = f.read(56)
    if not record.startswith(_EOCD64):
        raise ValueError("zip64 end record missing")
    count, size, start = struct.unpack_from("<QQQ", record, 32)
    return count, size, start
