"""Request bodies streamed to disk as they arrive: multipart file fields and raw upload parts.

Nothing is buffered beyond one network chunk. Who may send a body, and how large, is settled by
``gate.RequestGate`` before the first byte; a body that stalls or drips is dropped by the
``slowclients.BodyDeadline`` middleware (408), as on every route. A dropped, disconnected or
truncated multipart upload (one that ends before its closing boundary) leaves nothing behind: its file
and row are removed at once. A dropped part is never marked received, so its bytes are overwritten
when it is sent again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from modelport.errors import InvalidRequest, UploadTooLarge
from modelport.ingest.uploads import FileSink
from modelport.storage.db.tables import Upload


def _missing_file() -> RequestValidationError:
    return RequestValidationError([{"loc": ("body", "file"), "msg": "Field required", "type": "missing"}])


def check_declared_length(request: Request, limit: int) -> None:
    """Redundant since ``gate.RequestGate`` caps this route's body by the same limit; kept for callers."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:  # room for multipart framing
        raise UploadTooLarge(f"the upload is larger than the limit of {limit} bytes (MODELPORT_MAX_UPLOAD_BYTES)")


async def receive_multipart_file(request: Request, begin: Callable[[str], FileSink], field: str = "file") -> Upload:
    """Stream the ``field`` file of a multipart body into a sink from ``begin(filename)``."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise _missing_file()
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "sink": None, "writing": False, "end": False}

    def on_part_begin() -> None:
        state["headers"], state["writing"] = {}, False

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        is_file = disposition.get(b"name") == field.encode() and b"filename" in disposition
        if is_file and state["sink"] is None:
            state["sink"] = begin(disposition[b"filename"].decode(errors="replace"))
            state["writing"] = True

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["writing"]:
            state["sink"].write(data[start:end])

    def on_part_end() -> None:
        state["writing"] = False

    def on_end() -> None:
        state["end"] = True

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_end": on_end,
    }
    parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():  # stalls and drips: slowclients.BodyDeadline
            parser.write(chunk)
        parser.finalize()
        if not state["end"]:  # finalize() does not check this: a cut-off body would look complete
            raise InvalidRequest("the multipart body ended before its closing boundary: it was cut short", param="file")
    except BaseException as e:
        if state["sink"] is not None:
            state["sink"].abort()
        if isinstance(e, MultipartParseError):
            raise InvalidRequest(f"the multipart body is malformed: {e}", param="file") from None
        raise
    if state["sink"] is None:
        raise _missing_file()
    finished: Upload = state["sink"].finish()
    return finished


async def receive_raw(request: Request, target: Path, offset: int, length: int) -> tuple[int, str]:
    """Write the body into ``target`` at ``offset``; refuse it past ``length`` bytes. Returns (size, sha256).

    Nothing is marked received here: the caller does that once the sha256 matches, so bytes of a
    failed or corrupted attempt are simply overwritten by the next one.
    """
    digest, size = hashlib.sha256(), 0
    with open(target, "r+b") as out:
        out.seek(offset)
        async for chunk in request.stream():  # stalls and drips: slowclients.BodyDeadline
            size += len(chunk)
            if size > length:
                raise InvalidRequest(f"this part must be {length} bytes; more arrived", param="part")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()
