"""Slow clients cannot hold the server: deadlines on request headers and on request bodies.

uvicorn waits forever for a request's headers (its keep-alive timer only runs between requests, and
any byte cancels it), so a client sending a header byte every few seconds ("slowloris") keeps its
connection open indefinitely, and enough of them exhaust the connection limit. Two rules:

- ``HeaderDeadlineH11Protocol``: a request's headers must be complete within ``header_timeout_s``
  of the connection opening or of the previous response ending; otherwise the connection is closed.
- ``BodyDeadline`` (ASGI middleware): while a request body is being read, a gap of more than
  ``stall_s`` with nothing received, or an average rate below ``MIN_RATE`` once ``stall_s`` has
  passed, ends the request with 408. Only the body is timed: a streamed response's wait for the
  client's disconnect is not.

Both work on the event loop only; no worker thread is ever parked on a slow client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

MIN_RATE = 16 * 1024  # bytes/s; far below any real link, far above a deliberate drip


class RequestBodyStalled(HTTPException):
    """An HTTPException, not a domain error: FastAPI turns any other exception raised while it reads a
    body into a 400 "error parsing the body", and lets only these through."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=408, detail=message)


class BodyDeadline:
    def __init__(self, app: ASGIApp, stall_s: float) -> None:
        self.app, self.stall_s = app, stall_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, received, done = time.monotonic(), 0, False

        async def timed_receive() -> Message:
            nonlocal received, done
            if done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=self.stall_s)
            except TimeoutError:
                raise RequestBodyStalled(
                    f"the request body sent nothing for {self.stall_s:.0f} s; it was dropped"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
                return message
            received += len(message.get("body", b""))
            elapsed = time.monotonic() - started
            if elapsed > self.stall_s and received / elapsed < MIN_RATE:
                raise RequestBodyStalled(f"the request body is arriving slower than {MIN_RATE} bytes/s; it was dropped")
            return message

        await self.app(scope, timed_receive, send)


class HeaderDeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's headers; ``header_timeout_s`` is set
    on a subclass by ``protocol_with_header_deadline``."""

    header_timeout_s = 10.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        running = self.cycle is not None and not self.cycle.response_complete
        if not running and not self.transport.is_closing():  # never cut a request the app is serving
            self.transport.close()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle:  # a request's headers are complete: the app has it now
            self._disarm()

    def on_response_complete(self) -> None:
        # Armed first: uvicorn may start a pipelined request inside this call, which disarms it.
        if not self.transport.is_closing():
            self._arm()  # the next request on this kept-alive connection gets the same deadline
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol_with_header_deadline(timeout_s: float) -> type[HeaderDeadlineH11Protocol]:
    return type("HeaderDeadlineH11", (HeaderDeadlineH11Protocol,), {"header_timeout_s": timeout_s})
