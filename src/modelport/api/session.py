"""Browser sessions: a signed session token in an HttpOnly cookie, and the CSRF token that goes with it.

Signing in trades an API key for a session token (``accounts/sessions.py``): it names the key and
expires (``MODELPORT_WEB_SESSION_TTL_S``), and revoking the key ends it. The key itself is never
stored in the browser. Signing out deletes the cookie; the server keeps no session rows, so a copied
token stays good until it expires or its key is revoked. The cookie is ``SameSite=Strict`` and
``HttpOnly``. Requests that change something and are authenticated by the
cookie must also carry the CSRF token (form field ``csrf_token`` or header ``X-CSRF-Token``), an HMAC
of the session token that only pages the server rendered for that session contain.

The sign-in form itself has no session yet, so its guard is the browser's own word on where the form
came from (``from_this_site``): otherwise any site could sign a visitor into the attacker's account
("login CSRF") and read what the visitor then uploads.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.requests import Request

from modelport.errors import PermissionDenied

SESSION_COOKIE = "modelport_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_token(session: str) -> str:
    return hmac.new(session.encode(), b"modelport-csrf-v1", hashlib.sha256).hexdigest()


def csrf_ok(session: str, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(csrf_token(session), str(presented))


def cookie_session(request: Request) -> str | None:
    """The session token from the cookie; for unsafe methods, only with a matching CSRF header."""
    session = request.cookies.get(SESSION_COOKIE)
    if not session:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
        raise PermissionDenied("missing or wrong CSRF token: send the page's token in the X-CSRF-Token header")
    return session


def from_this_site(request: Request, other_origins: Iterable[str] = ()) -> bool:
    """Whether a form post came from this site's own pages, by ``Sec-Fetch-Site``, ``Origin`` or ``Referer``.

    Browsers send ``Origin`` with every cross-site POST (``null`` when a page hides its address), so a
    post with neither header comes from a program, which could send the key itself anyway. The host is
    compared without the scheme: behind a TLS-terminating proxy the server sees http while the browser
    says https. ``other_origins``: MODELPORT_WEB_ORIGINS, for a proxy that rewrites the Host header.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if claimed is None:
        return True
    netloc = urlsplit(claimed).netloc.lower()
    allowed = {request.headers.get("host", "").lower()} | {urlsplit(o.strip()).netloc.lower() for o in other_origins}
    return bool(netloc) and netloc in allowed
