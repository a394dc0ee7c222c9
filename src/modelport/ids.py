"""Prefixed ids, sortable by creation time: ``job-…``, ``model-…``, ``key-…``.

The Together wire examples use ``job-<uuid>`` and ``model-<uuid>``; a UUIDv7-style layout (48-bit
millisecond timestamp first) keeps that look while making ids sort by creation.
"""

from __future__ import annotations

import os
import re
import time
import uuid

# An uploaded file's id (``new_id("file")``), as a model source names it.
UPLOAD_ID = re.compile(r"^file-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _uuid7() -> uuid.UUID:
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & (2**48 - 1)) << 80 | rand
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
    return uuid.UUID(int=value)


def new_id(prefix: str) -> str:
    return f"{prefix}-{_uuid7()}"
