"""Browser sessions: the API key in an HttpOnly cookie, and the CSRF token that goes with it.

The cookie holds the API key itself (``SameSite=Strict``, ``HttpOnly``): revoking the key ends every
session using it, and the server keeps no session state. Requests that change something and are
authenticated by the cookie must also carry the CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``), an HMAC of the key that only pages the server rendered for that key contain.
"""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

from modelport.errors import PermissionDenied

SESSION_COOKIE = "modelport_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(api_key: str) -> str:
    return hmac.new(api_key.encode(), b"modelport-csrf-v1", hashlib.sha256).hexdigest()


def csrf_ok(api_key: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(api_key), str(presented))


def cookie_key(request: Request) -> str | None:
    """The API key from the session cookie; for unsafe methods, only with a matching CSRF header."""
    key = request.cookies.get(SESSION_COOKIE)
    if not key:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(key, request.headers.get(CSRF_HEADER)):
        raise PermissionDenied("missing or wrong CSRF token: send the page's token in the X-CSRF-Token header")
    return key
