"""Who may send a body, and how large: settled before the first byte of it is handed to the app.

FastAPI reads and parses a route's JSON or form body before it resolves the route's dependencies, so
a key checked by a dependency is checked after the body: an anonymous client could make the server
buffer and parse hundreds of megabytes only to be told 401. ``RequestGate`` (ASGI middleware) sits on
the app's ``receive``. By the app's first call of it the router has chosen the route (``scope["route"]``,
``scope["endpoint"]``), and nothing of the body has been read yet; there the gate

1. authenticates the caller if the route needs one (a ``get_principal`` dependency: key or session
   cookie; ``web_principal``/``session_key``: the console's session), from the headers alone, in a
   worker thread. The principal is left in ``request.state``, so the dependency makes no second lookup
   (and where a dependency ran first, as on the streamed upload routes, the gate uses its principal).
2. checks ``Content-Length`` against the route's cap (``Caps``): uploads up to their own limits,
   inference room for long prompts, every other authenticated route a small one, routes without a
   caller (the sign-in form) the smallest; then counts the bytes as they come, for a body sent without
   a length, and ends it with 413 the moment it passes the cap.

A refusal is the answer ``api/errors.py`` gives in the caller's dialect (401, the console's sign-in
redirect, 403, 413). Any answer that starts while body bytes are still unsent closes the connection,
or uvicorn would read and discard the rest of a 400 MB body to keep the connection alive.

Starlette's ``RequestBodyLimitMiddleware`` (and FastAPI's ``max_body_size``) cap bodies too, but answer
in their own shape and cannot authenticate first; hence this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.accounts.service import Principal
from modelport.api import errors
from modelport.api.deps import (
    authenticate,
    get_principal,
    session_key,
    session_principal,
    stashed_principal,
    web_principal,
)
from modelport.api.native.uploads import put_part
from modelport.api.nebius.router import upload_model_file
from modelport.api.openai.router import chat_completions, completions, embeddings
from modelport.api.together.v2 import put_upload_part
from modelport.errors import RequestTooLarge, UploadTooLarge
from modelport.ingest.etags import PART_BYTES
from modelport.settings import Settings

MULTIPART_FRAMING = 64 * 1024  # a multipart body's boundaries and part headers around the file itself
INFERENCE_ENDPOINTS = frozenset({chat_completions, completions, embeddings})


@dataclass(frozen=True)
class Cap:
    bytes: int
    setting: str
    error: type[RequestTooLarge] = RequestTooLarge

    def exceeded(self) -> RequestTooLarge:
        return self.error(f"the request body is larger than this route's limit of {self.bytes} bytes ({self.setting})")


@dataclass(frozen=True)
class Policy:
    cap: Cap
    authenticate: Callable[[Request], Principal] | None = None  # blocking: run in a worker thread


class Caps:
    """The body caps, by kind of route."""

    def __init__(self, settings: Settings) -> None:
        self.anonymous = Cap(settings.max_anonymous_body_bytes, "MODELPORT_MAX_ANONYMOUS_BODY_BYTES")
        self.json = Cap(settings.max_body_bytes, "MODELPORT_MAX_BODY_BYTES")
        self.inference = Cap(settings.max_inference_body_bytes, "MODELPORT_MAX_INFERENCE_BODY_BYTES")
        self.uploads: dict[Callable[..., Any], Cap] = {  # routes whose body is an upload, streamed to disk
            upload_model_file: Cap(
                settings.max_upload_bytes + MULTIPART_FRAMING, "MODELPORT_MAX_UPLOAD_BYTES", UploadTooLarge
            ),
            put_part: Cap(settings.upload_part_max_bytes, "MODELPORT_UPLOAD_PART_MAX_BYTES", UploadTooLarge),
            # Together v2's parts are fixed at 20 MiB; the URL's signature is checked before any is read.
            put_upload_part: Cap(PART_BYTES, "the 20 MiB part size of Together's upload protocol", UploadTooLarge),
        }


def _calls(dependant: Dependant) -> Iterator[Any]:
    for sub in dependant.dependencies:
        yield sub.call
        yield from _calls(sub)


def policy_of(route: Any, caps: Caps) -> Policy:
    """A route's policy, from its dependencies and its endpoint (an APIRoute; anything else: anonymous)."""
    dependant: Dependant | None = getattr(route, "dependant", None)
    calls = set(_calls(dependant)) if dependant is not None else set()
    auth = session_principal if calls & {web_principal, session_key} else None
    auth = authenticate if get_principal in calls else auth
    endpoint = getattr(route, "endpoint", None)
    if endpoint in caps.uploads:
        return Policy(caps.uploads[endpoint], auth)
    return Policy(caps.inference if endpoint in INFERENCE_ENDPOINTS else caps.json if auth else caps.anonymous, auth)


def _declares_a_body(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    return headers.get(b"content-length", b"0") != b"0" or b"transfer-encoding" in headers


class RequestGate:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.caps = app, Caps(settings)
        self._policies: dict[int, Policy] = {}  # by id(route): routes live as long as the app

    def policy(self, route: Any) -> Policy:
        if id(route) not in self._policies:
            self._policies[id(route)] = policy_of(route, self.caps)
        return self._policies[id(route)]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        passage = _Passage(self, scope, receive, send)
        await self.app(scope, passage.receive, passage.send)


class _Passage:
    """One request's body on its way through the gate."""

    def __init__(self, gate: RequestGate, scope: Scope, receive: Receive, send: Send) -> None:
        self.gate, self.scope, self._receive, self._send = gate, scope, receive, send
        self.cap: Cap | None = None
        self.received = 0
        self.finished = not _declares_a_body(scope)

    async def receive(self) -> Message:
        if self.cap is None:
            self.cap = await self._admit()
        message = await self._receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.finished = not message.get("more_body", False)
            if self.received > self.cap.bytes:
                raise errors.BodyRefused(self.cap.exceeded())
        return message

    async def _admit(self) -> Cap:
        """Before the first byte: the caller (if the route needs one), then the declared length."""
        request = Request(self.scope)
        policy = self.gate.policy(self.scope.get("route"))
        try:
            if policy.authenticate is not None and stashed_principal(request) is None:
                request.state.principal = await run_in_threadpool(policy.authenticate, request)
        except Exception as e:  # raised from receive(), it must be an HTTPException to reach its handler
            raise errors.BodyRefused(e) from None
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > policy.cap.bytes:
            raise errors.BodyRefused(policy.cap.exceeded())
        return policy.cap

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and not self.finished:
            # Answered before the whole body came: end the connection rather than read the rest.
            message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
        await self._send(message)
