"""How the console's pages answer a failure: an HTML error page in the console's frame, or, when the
session is missing or expired (``SignInRequired``), a redirect to the sign-in page that comes back.

``app.py`` hands ``PAGES`` to ``api/errors.install`` as the dialect of every path no API owns, so that
``api`` never imports ``web``.
"""

from __future__ import annotations

from urllib.parse import quote

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

from modelport.api.deps import SignInRequired, stashed_principal
from modelport.api.dialect import Problem
from modelport.api.session import SESSION_COOKIE
from modelport.errors import ModelportError
from modelport.web.router import page


def error_page(request: Request, status: int, message: str) -> Response:
    """The navigation stays on an error page whenever the browser holds a session (whose account is named
    when a route already looked it up; a path no route owns is not worth a database read to name it)."""
    key = request.cookies.get(SESSION_COOKIE)
    who = stashed_principal(request)
    return page(request, "error.html", key, who, status, code=status, message=message, signed_in=bool(key))


def sign_in_first(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target)}", status_code=303)


class ConsolePages:
    """The ``Dialect`` of the web console."""

    def domain(self, request: Request, error: ModelportError) -> Response:
        return error_page(request, error.status_code, error.message)

    def validation(self, request: Request, problems: list[Problem]) -> Response:
        return error_page(request, 400, "; ".join(p.describe() for p in problems) or "invalid form")

    def http(self, request: Request, error: HTTPException) -> Response:
        if isinstance(error, SignInRequired):
            return sign_in_first(request)
        return error_page(
            request, error.status_code, "page not found" if error.status_code == 404 else str(error.detail)
        )

    def unexpected(self, request: Request) -> Response:
        return error_page(request, 500, "internal server error; see the server log")


PAGES = ConsolePages()
