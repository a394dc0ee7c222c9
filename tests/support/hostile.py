"""A loopback archive server that misbehaves on purpose: encoded answers nobody asked for, and drips.

- ``encoded(name, data, bomb, ...)``: serves ``data`` (Range honoured), except that plain GETs and/or
  range requests are answered with ``bomb`` under ``Content-Encoding: gzip``, whatever the request's
  ``Accept-Encoding`` said.
- ``drip(name, size, every_s)``: announces ``size`` bytes and sends one every ``every_s`` seconds.
- ``paced(name, size, bytes_per_s, prefix)``: announces ``size`` bytes, ``prefix`` then zeros, and sends
  them at that rate.
- ``redirect(kind)``: a 302 to ``/encoded/...`` whose own body is a gzip bomb (``kind="gzip"``) or
  1 MiB of plain bytes (``kind="big"``): httpx reads a redirect's body itself before following it.
- ``abort()``: every open response breaks off and later requests get 503, so jobs stuck on this
  server end at once.

``streamed_zip(files)`` is a zip as written to a pipe with stored members: sizes after the data, so
it can only be read directory-first, over range requests. ``gzip_bomb(prefix, mib)`` makes a small
gzip member that inflates to ``prefix`` plus ``mib`` MiB of zeros, in a fraction of a second (one
deflate block repeated after full flushes). ``EncodingHub`` is an ASGI wrapper around ``FakeHub``'s
app that does the same to hub file downloads, or drips them.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import zipfile
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import uvicorn
from isal import isal_zlib
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def gzip_bomb(prefix: bytes, mib: int) -> bytes:
    """A gzip member inflating to ``prefix`` + ``mib`` MiB of zeros; about 1 KiB per MiB."""
    zeros = bytes(2**20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(prefix) + deflate.flush(zlib.Z_FULL_FLUSH)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MiB
    crc = isal_zlib.crc32(prefix)
    for _ in range(mib):
        crc = isal_zlib.crc32(zeros, crc)
    size = (len(prefix) + mib * 2**20) & 0xFFFFFFFF
    return (
        b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
        + head
        + block * mib
        + deflate.flush()
        + struct.pack("<II", crc, size)
    )


def streamed_zip(files: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    """What zip writers produce on a pipe: sizes and CRCs only after the data (data descriptors)."""

    class Pipe(io.RawIOBase):  # not seekable: zipfile writes data descriptors
        def __init__(self) -> None:
            self.data = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            self.data += b
            return len(b)

    pipe = Pipe()
    with zipfile.ZipFile(pipe, "w", method) as zf:
        for name, data in files.items():
            with zf.open(name, "w") as member:
                member.write(data)
    return bytes(pipe.data)


@dataclass
class _Encoded:
    data: bytes
    bomb: bytes
    on_full: bool
    on_ranges: bool


class HostileServer:
    def __init__(self) -> None:
        self.app = Starlette(
            routes=[
                Route("/encoded/{name}", self._encoded),
                Route("/drip/{name}", self._drip),
                Route("/paced/{name}", self._paced),
                Route("/redirect/{kind}", self._redirect),
            ]
        )
        self.encoded_files: dict[str, _Encoded] = {}
        self.drips: dict[str, tuple[int, float]] = {}
        self.paces: dict[str, tuple[int, int, bytes]] = {}
        self.requests: list[tuple[str, str | None, str | None]] = []  # (path, range, accept-encoding)
        self.url = ""
        self._aborted = threading.Event()
        self._server: uvicorn.Server | None = None

    def encoded(self, name: str, data: bytes, bomb: bytes, *, on_full: bool, on_ranges: bool) -> str:
        self.encoded_files[name] = _Encoded(data, bomb, on_full, on_ranges)
        return f"{self.url}/encoded/{name}"

    def drip(self, name: str, size: int, every_s: float) -> str:
        self.drips[name] = (size, every_s)
        return f"{self.url}/drip/{name}"

    def paced(self, name: str, size: int, bytes_per_s: int, prefix: bytes = b"") -> str:
        self.paces[name] = (size, bytes_per_s, prefix)
        return f"{self.url}/paced/{name}"

    def redirect(self, kind: str) -> str:
        return f"{self.url}/redirect/{kind}"

    def abort(self) -> None:
        self._aborted.set()

    def _record(self, request: Request) -> None:
        self.requests.append((request.url.path, request.headers.get("range"), request.headers.get("accept-encoding")))

    async def _encoded(self, request: Request) -> Response:
        self._record(request)
        served = self.encoded_files[request.path_params["name"]]
        wanted = request.headers.get("range", "")
        headers = {"ETag": '"v1"', "Accept-Ranges": "bytes"}
        if wanted.startswith("bytes="):
            if served.on_ranges:
                return Response(served.bomb, 206, headers | {"Content-Encoding": "gzip"})
            first, _, last = wanted[6:].partition("-")
            start, end = int(first), min(int(last) if last else len(served.data) - 1, len(served.data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(served.data)}"
            return Response(served.data[start : end + 1], 206, headers)
        if served.on_full:
            return Response(served.bomb, 200, headers | {"Content-Encoding": "gzip"})
        return Response(served.data, 200, headers)

    async def _redirect(self, request: Request) -> Response:
        self._record(request)
        headers = {"Location": f"{self.url}/encoded/anything"}
        if request.path_params["kind"] == "gzip":
            return Response(gzip_bomb(b"", 256), 302, headers | {"Content-Encoding": "gzip"})
        return Response(bytes(2**20), 302, headers)

    async def _drip(self, request: Request) -> Response:
        self._record(request)
        if self._aborted.is_set():
            return Response(status_code=503)
        size, every_s = self.drips[request.path_params["name"]]

        async def body() -> AsyncIterator[bytes]:
            for _ in range(size):
                await self._wait(every_s)
                yield b"\0"

        return StreamingResponse(body(), headers={"Content-Length": str(size), "Accept-Ranges": "none"})

    async def _paced(self, request: Request) -> Response:
        self._record(request)
        if self._aborted.is_set():
            return Response(status_code=503)
        size, rate, prefix = self.paces[request.path_params["name"]]
        chunk = max(1, rate // 10)

        async def body() -> AsyncIterator[bytes]:
            yield prefix
            for sent in range(len(prefix), size, chunk):
                await self._wait(chunk / rate)
                yield bytes(min(chunk, size - sent))

        return StreamingResponse(body(), headers={"Content-Length": str(size), "Accept-Ranges": "none"})

    async def _wait(self, seconds: float) -> None:
        for _ in range(max(1, round(seconds / 0.05))):
            if self._aborted.is_set():
                raise ConnectionResetError("the test server breaks off")
            await asyncio.sleep(min(seconds, 0.05))

    def start(self, port: int) -> None:
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        threading.Thread(target=self._server.run, daemon=True).start()
        while not self._server.started:
            threading.Event().wait(0.02)
        # "localhost": a URL on the hub's own host would be read as a repo, and the tests allow this name.
        self.url = f"http://localhost:{port}"

    def stop(self) -> None:
        self.abort()
        if self._server:
            self._server.should_exit = True


class EncodingHub:
    """Wraps a hub's ASGI app: file downloads (GET .../resolve/...) answer with ``body`` under
    ``Content-Encoding: gzip``, or, with ``drip_every_s``, send the real file one byte at a time."""

    def __init__(self, inner: Any, *, body: bytes = b"", drip_every_s: float = 0.0) -> None:
        self.inner, self.body, self.drip_every_s = inner, body, drip_every_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or "/resolve/" not in scope["path"]:
            await self.inner(scope, receive, send)
            return
        if self.drip_every_s:
            await self.inner(scope, receive, self._dripping(send))
            return
        headers = [(b"content-encoding", b"gzip"), (b"content-length", str(len(self.body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})

    def _dripping(self, send: Send) -> Send:
        async def dripping(message: MutableMapping[str, Any]) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            body = message.get("body", b"")
            for i in range(len(body)):
                await asyncio.sleep(self.drip_every_s)
                await send({"type": "http.response.body", "body": body[i : i + 1], "more_body": True})
            if not message.get("more_body"):
                await send({"type": "http.response.body", "body": b""})

        return dripping
