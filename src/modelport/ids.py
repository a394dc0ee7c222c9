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


def _to_wire(wire_prefix: str, our_prefix: str, our_id: str) -> str:
    return wire_prefix + uuid.UUID(our_id.removeprefix(our_prefix)).hex


def _of_wire(wire_prefix: str, our_prefix: str, wire_id: str) -> str:
    """Our id for a wire id; one that is not of that form gives "" (which names nothing)."""
    try:
        return f"{our_prefix}{uuid.UUID(hex=wire_id.removeprefix(wire_prefix))}"
    except ValueError:
        return ""


def wire_model_id(model_id: str) -> str:
    """``model-0192…-…`` -> ``ml_0192…`` (the UUID's 32 hex digits)."""
    return _to_wire(WIRE_MODEL_PREFIX, "model-", model_id)


def model_id_of_wire(wire_id: str) -> str:
    """The inverse of ``wire_model_id``."""
    return _of_wire(WIRE_MODEL_PREFIX, "model-", wire_id)


# A deployment is an endpoints row (``endpoint-<uuid>``); Together's v2 wire names it ``dep_<hex>``.
WIRE_DEPLOYMENT_PREFIX = "dep_"


def wire_deployment_id(endpoint_id: str) -> str:
    return _to_wire(WIRE_DEPLOYMENT_PREFIX, "endpoint-", endpoint_id)


def deployment_id_of_wire(wire_id: str) -> str:
    """``dep_…`` -> ``endpoint-…``."""
    return _of_wire(WIRE_DEPLOYMENT_PREFIX, "endpoint-", wire_id)


def new_wire_id(prefix: str) -> str:
    """Ids that exist only on the v2 wire (``ep_``, ``rol_``, ``abx_``, ``exp_``, ``dad_``, ``evt_``):
    the prefix and a UUIDv7's hex, sortable by creation."""
    return f"{prefix}_{_uuid7().hex}"
