"""One ``TOGETHER_BASE_URL`` for every together client: a redundant leading ``/v1`` is dropped.

The 2.x clients want a base URL ending in ``/v1`` and send relative paths (``models``); the 3.x client
wants the bare host and sends versioned paths (``/v1/chat/completions``, ``/v2/projects/…``,
``/v3/whoami``). Given a 2.x-style base, 3.x sends ``/v1/v1/…``, ``/v1/v2/…`` and ``/v1/v3/…``
(``shared/WIRE-v2.md`` §1). No route of ours starts with two version segments, so those paths are
rewritten to their second half before routing, and both generations work against either base URL.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Receive, Scope, Send

_REDUNDANT = re.compile(r"^/v1(?=/v[123]/)")


def strip_redundant_v1(path: str) -> str:
    """``/v1/v3/whoami`` -> ``/v3/whoami``; every other path unchanged."""
    return _REDUNDANT.sub("", path, count=1)


class RedundantV1Prefix:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = strip_redundant_v1(scope["path"])
            if path != scope["path"]:
                raw = scope.get("raw_path")
                scope = {**scope, "path": path, "raw_path": raw[3:] if raw and raw.startswith(b"/v1/") else raw}
        await self.app(scope, receive, send)
