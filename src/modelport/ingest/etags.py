"""S3-style multipart ETags at Together's fixed 20 MiB parts: how the v2 upload and download protocols
name a file's content (``shared/WIRE-v2.md`` §5).

One part: the MD5 in hex. Several: ``hex(md5(part₁ digest ‖ part₂ digest ‖ …))-N``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

PART_BYTES = 20 * 2**20
READ = 1 << 20


def combine(part_md5s: Iterable[str]) -> str:
    """The file's ETag from its parts' MD5s (hex), in part order."""
    digests = [bytes.fromhex(h) for h in part_md5s]
    if len(digests) == 1:
        return digests[0].hex()
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def parts_of(size: int) -> int:
    return max(1, -(-size // PART_BYTES))


def of_file(path: Path) -> str:
    with open(path, "rb") as f:
        return of_stream(f)


def of_stream(f: BinaryIO) -> str:
    """Read the stream once, part by part."""
    md5s: list[str] = []
    while True:
        part, left = hashlib.md5(usedforsecurity=False), PART_BYTES
        while left and (chunk := f.read(min(READ, left))):
            part.update(chunk)
            left -= len(chunk)
        if left == PART_BYTES and md5s:
            break
        md5s.append(part.hexdigest())
        if left:
            break
    return combine(md5s)
