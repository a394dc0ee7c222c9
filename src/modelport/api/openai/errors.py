"""OpenAI's error envelope, which Together's API shares: ``{"error": {"message", "type", "param", "code"}}``.

The shape is the same for every failure, request validation, unknown routes and unexpected failures
included: the official clients (and Together's 1.x client) raise on any other shape. ``code`` is ours
(the domain error's machine code); ``type`` is OpenAI's coarse vocabulary, which lives here and not on
the domain errors. A 401 carries ``WWW-Authenticate: Bearer``. A stream that fails after its 200 went
out sends the same body as its last event (``stream_error``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from modelport.api.dialect import Problem
from modelport.errors import (
    AuthenticationError,
    Conflict,
    IngestError,
    InvalidRequest,
    ModelportError,
    NotFound,
    PermissionDenied,
    QuotaExceeded,
    RequestTooLarge,
)
from modelport.redact import scrub

log = logging.getLogger(__name__)

INTERNAL = "internal server error; see the server log"

# OpenAI's ``type`` for each branch of the domain error tree; anything else is a "server_error".
ERROR_TYPES: dict[type[ModelportError], str] = {
    AuthenticationError: "authentication_error",
    PermissionDenied: "permission_error",
    NotFound: "not_found_error",
    RequestTooLarge: "invalid_request_error",
    InvalidRequest: "invalid_request_error",
    QuotaExceeded: "rate_limit_error",
    Conflict: "conflict_error",
    IngestError: "ingest_error",
}

# HTTP-level refusals: (type, code) by status.
HTTP_ERRORS = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),  # slowclients.RequestBodyStalled
}


def error_type(error: ModelportError) -> str:
    return next((ERROR_TYPES[kind] for kind in type(error).__mro__ if kind in ERROR_TYPES), "server_error")


def envelope(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_envelope(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if status == 409:
        # Together's 3.x SDK retries a 409 unless told not to; ours are real conflicts (a name taken, a
        # revision pinned), which the same request meets again.
        headers["x-should-retry"] = "false"
    return JSONResponse(envelope(message, type_, code, param), status_code=status, headers=headers or None)


def stream_error(exc: Exception) -> dict[str, Any]:
    """The error event sent when a server-sent-event stream fails after its 200 went out."""
    if isinstance(exc, ModelportError):
        return envelope(exc.message, error_type(exc), exc.code, exc.param)
    log.error("stream failed: %s", scrub(repr(exc)), exc_info=exc)
    return envelope(INTERNAL, "server_error", "internal_error")


class OpenAIErrors:
    """The ``Dialect`` of ``/v1`` and ``/v3`` (OpenAI, Together) and ``/api`` (native)."""

    def domain(self, request: Request, error: ModelportError) -> Response:
        return openai_envelope(error.status_code, error.message, error_type(error), error.code, error.param)

    def validation(self, request: Request, problems: list[Problem]) -> Response:
        param = (problems[0].field or None) if problems else None
        message = "; ".join(p.describe() for p in problems) or "invalid request"
        return openai_envelope(422, message, "invalid_request_error", "invalid_request", param)

    def http(self, request: Request, error: HTTPException) -> Response:
        type_, code = HTTP_ERRORS.get(error.status_code, ("invalid_request_error", "http_error"))
        message = "route not found" if error.status_code == 404 else str(error.detail)
        return openai_envelope(error.status_code, f"{message}: {request.method} {request.url.path}", type_, code)

    def unexpected(self, request: Request) -> Response:
        return openai_envelope(500, INTERNAL, "server_error", "internal_error")


OPENAI = OpenAIErrors()
