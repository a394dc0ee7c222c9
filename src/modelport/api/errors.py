"""The one place domain errors become HTTP answers, in the envelope of the dialect that was called.

- ``/v1``, ``/v3`` (Together, OpenAI): ``{"error": {"message", "type", "param", "code"}}``, always,
  including for request validation, unknown routes and unexpected failures; the Together 1.x
  client raises on any other shape.
- ``/v0`` (Nebius): FastAPI's ``{"detail": ...}``, with 422 ``{"detail": [{"loc", "msg", "type"}]}``.
- The web console's pages (every other path): an HTML error page; a missing or expired session
  redirects to the sign-in page.
- A lost database connection is 503 ``database_unavailable`` with ``Retry-After``, in every dialect:
  the pool reconnects on the next request (``pool_pre_ping``), so retrying is the right move.
- What ``api/gate.py`` refuses while a body is being read (a key, a body over its cap) reaches these
  handlers as a ``BodyRefused`` carrying the error, and is answered exactly like it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelport.errors import DatabaseUnavailable, ModelportError
from modelport.redact import scrub
from modelport.storage.db.engine import is_database_down
from modelport.web.router import SignInRequired, error_page

log = logging.getLogger(__name__)


API_PREFIXES = ("/v0/", "/v1/", "/v3/", "/api/")


def _is_nebius(request: Request) -> bool:
    return request.url.path.startswith("/v0/")


def _is_page(request: Request) -> bool:
    return not request.url.path.startswith(API_PREFIXES) and request.url.path != "/health"


def openai_envelope(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, headers=headers)


def _domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ModelportError)
    if _is_page(request):
        response = error_page(request, exc.status_code, exc.message)
    elif _is_nebius(request):
        response = JSONResponse({"detail": exc.message}, status_code=exc.status_code)
    else:
        response = openai_envelope(exc.status_code, exc.message, exc.type, exc.code, exc.param)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: list[dict[str, Any]] = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
    ]
    if _is_page(request):
        return error_page(request, 400, "; ".join(_describe(e) for e in errors) or "invalid form")
    if _is_nebius(request):
        return JSONResponse({"detail": errors}, status_code=422)
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    param = ".".join(str(p) for p in first["loc"] if p != "body") or None
    message = "; ".join(_describe(e) for e in errors)
    return openai_envelope(422, message or "invalid request", "invalid_request_error", "invalid_request", param)


def _describe(error: dict[str, Any]) -> str:
    where = ".".join(str(p) for p in error["loc"] if p != "body")
    if not where and error["type"] == "model_attributes_type":
        return "the request body must be a JSON object"
    return f"{where}: {error['msg']}" if where else error["msg"]


def _http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if _is_page(request):
        return error_page(request, exc.status_code, "page not found" if exc.status_code == 404 else str(exc.detail))
    if _is_nebius(request):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    codes = {
        404: ("not_found_error", "not_found"),
        405: ("invalid_request_error", "method_not_allowed"),
        408: ("invalid_request_error", "request_timeout"),  # slowclients.RequestBodyStalled
    }
    type_, code = codes.get(exc.status_code, ("invalid_request_error", "http_error"))
    message = "route not found" if exc.status_code == 404 else str(exc.detail)
    return openai_envelope(exc.status_code, f"{message}: {request.method} {request.url.path}", type_, code)


def _unexpected(request: Request, exc: Exception) -> Response:
    if is_database_down(exc):
        cause = type(exc.orig).__name__ if isinstance(exc, DBAPIError) else type(exc).__name__
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, cause)
        return _domain(request, DatabaseUnavailable("the database is unavailable; try again shortly"))
    log.error("unhandled error on %s %s: %s", request.method, request.url.path, scrub(repr(exc)), exc_info=exc)
    if _is_page(request):
        return error_page(request, 500, "internal server error; see the server log")
    if _is_nebius(request):
        return JSONResponse({"detail": "internal server error"}, status_code=500)
    return openai_envelope(500, "internal server error; see the server log", "server_error", "internal_error")


def _sign_in(request: Request, exc: Exception) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target)}", status_code=303)


class BodyRefused(StarletteHTTPException):
    """An error raised while a request body is read (``api/gate.py``: a refused caller, a body past its
    cap). FastAPI turns any other exception raised while it reads a body into a 400 "error parsing the
    body" and lets only HTTPExceptions through, so this one carries the error to its own handler."""

    def __init__(self, error: Exception) -> None:
        super().__init__(status_code=getattr(error, "status_code", 500), detail=str(error))
        self.error = error


# Most specific first: the app looks a handler up by the error's class, ``_refused`` by isinstance.
HANDLERS: list[tuple[type[Exception], Callable[[Request, Exception], Response]]] = [
    (SignInRequired, _sign_in),
    (ModelportError, _domain),
    (RequestValidationError, _validation),
    (StarletteHTTPException, _http),
    (Exception, _unexpected),
]


def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BodyRefused)
    return next(handler for kind, handler in HANDLERS if isinstance(exc.error, kind))(request, exc.error)


def install(app: FastAPI) -> None:
    app.add_exception_handler(BodyRefused, _refused)
    for kind, handler in HANDLERS:
        app.add_exception_handler(kind, handler)


def stream_error(exc: Exception) -> dict[str, Any]:
    """The error event sent when a server-sent-event stream fails after its 200 went out."""
    if isinstance(exc, ModelportError):
        return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
    log.error("stream failed: %s", scrub(repr(exc)), exc_info=exc)
    return {
        "error": {
            "message": "internal server error; see the server log",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
