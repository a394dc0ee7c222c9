"""The one place that decides how a failure is answered: in the dialect of the path that was called.

``DIALECTS`` below is the one table from request path to dialect; each dialect (``api/dialect.py``)
renders the domain errors of ``modelport/errors.py``, request validation, HTTP errors and unexpected
failures in its own module:

- ``/v1``, ``/v3`` (Together, OpenAI), ``/api`` (native, read by the CLI), ``/health`` and ``/metrics``:
  ``api/openai/errors.py``, ``{"error": {"message", "type", "param", "code"}}``, always, including
  for request validation (422), unknown routes and unexpected failures; the Together 1.x client raises
  on any other shape. A 401 carries ``WWW-Authenticate: Bearer``.
- ``/v0`` (Nebius): ``api/nebius/errors.py``, FastAPI's ``{"detail": ...}``, with 422
  ``{"detail": [{"loc", "msg", "type"}]}``.
- The web console's pages (every other path): ``web/errors.py``, an HTML error page; a missing or
  expired session redirects to the sign-in page. ``app.py`` passes it in as ``install``'s fallback,
  so ``api`` never imports ``web``.

In every dialect:

- A domain error's ``retry_after`` is sent as ``Retry-After``.
- A lost database connection is 503 ``database_unavailable`` with ``Retry-After``: the pool
  reconnects on the next request (``pool_pre_ping``), so retrying is the right move.
- An unexpected failure is logged here, scrubbed of secrets; its text never reaches the caller.
- What ``api/gate.py`` refuses while a body is being read (a key, a body over its cap) reaches these
  handlers as a ``BodyRefused`` carrying the error, and is answered exactly like it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from modelport.api.dialect import Dialect, problems
from modelport.api.nebius.errors import NEBIUS
from modelport.api.openai.errors import OPENAI
from modelport.errors import DatabaseUnavailable, ModelportError
from modelport.redact import scrub
from modelport.storage.db.engine import is_database_down

log = logging.getLogger(__name__)

Handler = Callable[[Request, Exception], Response]

# The one table from request path to dialect, first match wins. A key ending in "/" covers every path
# under it; any other key is one exact path. Every other path gets the fallback given to ``install``.
DIALECTS: dict[str, Dialect] = {
    "/v0/": NEBIUS,
    "/v1/": OPENAI,
    "/v2/": OPENAI,  # Together 3.x's project-scoped management API
    "/v3/": OPENAI,  # Together's newer base URL
    "/api/": OPENAI,  # native: the same envelope, which the CLI reads
    "/health": OPENAI,
    "/metrics": OPENAI,  # scrapers read the status; a 401 carries WWW-Authenticate
}


def _covers(key: str, path: str) -> bool:
    return path.startswith(key) if key.endswith("/") else path == key


class BodyRefused(StarletteHTTPException):
    """An error raised while a request body is read (``api/gate.py``: a refused caller, a body past its
    cap). FastAPI turns any other exception raised while it reads a body into a 400 "error parsing the
    body" and lets only HTTPExceptions through, so this one carries the error to its own handler."""

    def __init__(self, error: Exception) -> None:
        super().__init__(status_code=getattr(error, "status_code", 500), detail=str(error))
        self.error = error


@dataclass(frozen=True)
class _Answers:
    """The app's exception handlers: each sorts out the failure, then lets the path's dialect answer."""

    fallback: Dialect

    def dialect(self, request: Request) -> Dialect:
        path = request.url.path
        return next((dialect for key, dialect in DIALECTS.items() if _covers(key, path)), self.fallback)

    def domain(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ModelportError)
        response = self.dialect(request).domain(request, exc)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    def validation(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return self.dialect(request).validation(request, problems(exc))

    def http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return self.dialect(request).http(request, exc)

    def unexpected(self, request: Request, exc: Exception) -> Response:
        if is_database_down(exc):
            cause = type(exc.orig).__name__ if isinstance(exc, DBAPIError) else type(exc).__name__
            log.warning("database unavailable on %s %s: %s", request.method, request.url.path, cause)
            return self.domain(request, DatabaseUnavailable("the database is unavailable; try again shortly"))
        log.error("unhandled error on %s %s: %s", request.method, request.url.path, scrub(repr(exc)), exc_info=exc)
        return self.dialect(request).unexpected(request)

    def handlers(self) -> list[tuple[type[Exception], Handler]]:
        """Most specific first: the app looks a handler up by the error's class, ``refused`` by isinstance."""
        return [
            (ModelportError, self.domain),
            (RequestValidationError, self.validation),
            (StarletteHTTPException, self.http),
            (Exception, self.unexpected),
        ]

    def refused(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BodyRefused)
        return next(handler for kind, handler in self.handlers() if isinstance(exc.error, kind))(request, exc.error)


def install(app: FastAPI, *, fallback: Dialect) -> None:
    """Answer every failure in the dialect of its path; ``fallback`` (the console's pages) for the rest."""
    answers = _Answers(fallback)
    app.add_exception_handler(BodyRefused, answers.refused)
    for kind, handler in answers.handlers():
        app.add_exception_handler(kind, handler)
