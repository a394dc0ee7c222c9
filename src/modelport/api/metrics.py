"""``GET /metrics`` in Prometheus' text format, and the middleware that counts every HTTP request.

What is counted and read lives in ``modelport/metrics.py``; this module is its HTTP edge:

- ``RequestMetrics`` (pure ASGI middleware, outside every other) counts each request once its response
  has ended, a stream's last byte included, by the route's template (``/v1/jobs/{job_id}``, from
  ``scope["route"]``, which the router sets in the scope the middleware shares) and never by the raw
  path, which holds ids and whatever a client makes up (those are ``unmatched``).
- ``GET /metrics`` answers whoever ``MODELPORT_METRICS_ACCESS`` lets in: ``loopback`` (the default)
  lets clients on this host scrape without a key and asks others for an administrator's API key,
  ``key`` asks everyone, ``open`` asks no one. The route has no ``get_principal`` dependency (a
  loopback scrape carries no key), so ``api/gate.py`` treats it as anonymous: a GET without a body
  passes, and the key is checked here.
"""

from __future__ import annotations

import ipaddress
import re
import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.routing import iter_route_contexts
from starlette.routing import BaseRoute, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.api.deps import authenticate, get_services
from modelport.errors import PermissionDenied
from modelport.metrics import UNMATCHED, HttpMetrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Blocking (a key lookup, the jobs' count, the engines' stats): FastAPI runs it in a worker thread."""
    services = get_services(request)
    check_access(request, services.settings.metrics_access)
    body, content_type = services.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


def check_access(request: Request, access: str) -> None:
    """Raises ``AuthenticationError`` (401) without a valid key, ``PermissionDenied`` (403) for a
    key that is not an administrator's, where ``access`` asks for one."""
    if access == "open" or (access == "loopback" and is_loopback(request.client.host if request.client else None)):
        return
    if not authenticate(request).is_admin:
        raise PermissionDenied("only an administrator's API key may read /metrics (MODELPORT_METRICS_ACCESS)")


def is_loopback(host: str | None) -> bool:
    """Whether the connection comes from this host (127.0.0.0/8, ::1, or ::ffff:127.x.y.z)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:  # a unix socket, or the test client's "testclient"
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class RouteTemplates:
    """The template each request was routed by, as the app serves it (``/v1/jobs/{job_id}``).

    ``scope["route"]`` is the route as its router declared it, without the prefix it was included under,
    and a mount leaves no route at all, only its app as ``scope["endpoint"]``; so the app's routes are
    indexed once, on first use (every router is included by then), by that object.
    """

    def __init__(self) -> None:
        self._index: dict[int, list[tuple[re.Pattern[str], str]]] | None = None

    def of(self, scope: Scope) -> str:
        key = scope.get("route") or scope.get("endpoint")
        if key is None:
            return UNMATCHED
        if self._index is None:
            self._index = _index(scope["app"].routes)
        candidates = self._index.get(id(key), [])
        if len(candidates) > 1:  # one router included under two prefixes
            candidates = [c for c in candidates if c[0].match(scope["path"])]
        if candidates:
            return candidates[0][1]
        fallback = getattr(key, "path_format", None)
        return fallback if isinstance(fallback, str) else UNMATCHED


def _index(routes: list[BaseRoute]) -> dict[int, list[tuple[re.Pattern[str], str]]]:
    index: dict[int, list[tuple[re.Pattern[str], str]]] = {}
    for context in iter_route_contexts(routes):
        route = context.original_route
        key = id(route.app) if isinstance(route, Mount) else id(route)
        if isinstance(context.path_format, str):
            index.setdefault(key, []).append((context.path_regex, context.path_format))
    return index


class RequestMetrics:
    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app, self.metrics, self.routes = app, metrics, RouteTemplates()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.monotonic(), 500  # an exception before any response ends as a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:  # after the whole body: a stream is counted when it ends, or when its client left
            self.metrics.answered(self.routes.of(scope), scope["method"], status, time.monotonic() - started)
