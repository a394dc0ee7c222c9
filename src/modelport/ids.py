"""Prefixed ids, sortable by creation time: ``job-…``, ``model-…``, ``key-…``.

The Together wire examples use ``job-<uuid>`` and ``model-<uuid>``; a UUIDv7-style layout (48-bit
millisecond timestamp first) keeps that look while making ids sort by creation.
"""

from __future__ import annotations

import os
import re
import time
import uuid

# The files of a direct multipart upload, as its ingest job names them (``ingest/multipart.py``).
PLAN_ID_PREFIX = "parts-"
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


# Together's v2 wire names models ``ml_…`` and its CLI dispatches on that prefix; ours are ``model-<uuid>``.
# The two forms map one to one, so every model answers to both without a second column.
WIRE_MODEL_PREFIX = "ml_"


def wire_model_id(model_id: str) -> str:
    """``model-0192…-…`` -> ``ml_0192…`` (the UUID's 32 hex digits)."""
    return WIRE_MODEL_PREFIX + uuid.UUID(model_id.removeprefix("model-")).hex


def model_id_of_wire(wire_id: str) -> str:
    """The inverse of ``wire_model_id``; an id that is not one gives "" (which names no model)."""
    try:
        return f"model-{uuid.UUID(hex=wire_id.removeprefix(WIRE_MODEL_PREFIX))}"
    except ValueError:
        return ""
