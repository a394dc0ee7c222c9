"""The engine protocol: the API server and its engine processes, over Unix sockets (or TCP, for a
replica on another host of a Ray cluster, ``endpoints/ray_replica.py``).

One connection per request. Each message is a frame: a 4-byte big-endian length, then msgpack.
A connection per request, rather than one stream multiplexing them all, because it gives each of the
three hard cases a plain answer:

- **cancellation** is closing the connection: the engine process sees end-of-file at once (it watches for
  it while it waits for the next token) and frees the sequence's row;
- **backpressure** is per request: a client that reads slowly fills its own socket's buffer, and only the
  writer of that request waits (``drain``), never the engine's batch loop or the other requests;
- **a worker that dies** ends every one of its connections at once: each request in flight there fails
  with ``EngineRestarted`` (503 ``engine_restarted``), none waits forever.

Connecting to a Unix socket costs tens of microseconds, next to milliseconds per token.

Over TCP every request carries the replica's token (``TcpAddress.token``): a Unix socket is born 0600 and
only this user's processes connect, but a TCP port is open to the cluster's network, so an engine
listening there answers only requests that show the token it was started with.

Requests and answers (``wire.py`` has the shapes of requests, steps and artifacts)::

    {"op": "generate", "request": …}   → one frame per token step (a list), the last with its finish
                                         reason; or {"error": …} instead of any step
    {"op": "prepare", "request": …}    → {"ok": true}                   (loads what the request needs)
    {"op": "embed", "model", "batch", "pooling"} → {"vectors": […]}
    {"op": "stats"}                    → {"stats": engine.stats()}     (readiness, /metrics)

Errors cross as ``{"error": {"code", "message", "param"}}`` and are raised on the client as the same error
of the tree (``errors.from_code``), so a worker's refusal reads exactly as it would have in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from modelport.errors import EngineFailed, EngineOverloaded, EngineRestarted, ModelportError, from_code
from modelport.serving.engine import Artifact, Engine, GenerationRequest, Pooling, TokenStep
from modelport.serving.wire import (
    artifact_from_json,
    artifact_to_json,
    pooling_from_json,
    pooling_to_json,
    request_from_json,
    request_to_json,
    step_from_wire,
    step_to_wire,
)

log = logging.getLogger(__name__)

# A frame's size is checked before it is read: a corrupt length must not become a huge allocation.
# The largest real frames are embedding batches (vectors of floats), far below this.
MAX_FRAME = 1 << 30
# Connections waiting to be accepted: a burst of requests (hundreds of streams starting at once) must
# queue here, not be refused while the engine process is busy; the kernel caps it at somaxconn.
BACKLOG = 4096
CONNECT_PATIENCE_S = 5.0  # how long a client retries while that queue is full (EAGAIN)
_LOST = (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError)


class ProtocolError(Exception):
    """A frame that is not one: a length past ``MAX_FRAME``."""


@dataclass(frozen=True)
class TcpAddress:
    """An engine process listening on TCP (a replica on a Ray node): where, and the token it asks for."""

    host: str
    port: int
    token: str = field(repr=False)  # never in a log line or an error message

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


# Where an engine process answers: a Unix socket on this host, or a TCP port on another.
EngineAddress = Path | TcpAddress


def _signed(message: dict[str, Any], address: EngineAddress) -> dict[str, Any]:
    return {**message, "token": address.token} if isinstance(address, TcpAddress) else message


def pack(message: Any) -> bytes:
    body: bytes = msgpack.packb(message)
    return len(body).to_bytes(4, "big") + body


def _length(head: bytes) -> int:
    size = int.from_bytes(head, "big")
    if size > MAX_FRAME:
        raise ProtocolError(f"a frame of {size} bytes is over the limit of {MAX_FRAME}")
    return size


async def read_frame(reader: asyncio.StreamReader) -> Any:
    size = _length(await reader.readexactly(4))
    return msgpack.unpackb(await reader.readexactly(size))


def error_to_wire(e: BaseException) -> dict[str, Any]:
    if isinstance(e, ModelportError):
        return {"error": {"code": e.code, "message": e.message, "param": e.param}}
    log.exception("engine request failed", exc_info=e)
    return {"error": {"code": "engine_error", "message": f"the engine failed: {type(e).__name__}", "param": None}}


def error_from_wire(message: dict[str, Any]) -> ModelportError:
    err = message["error"]
    return from_code(str(err.get("code")), str(err.get("message")), param=err.get("param"))


# --- the engine process's side ---------------------------------------------------------------------
class EngineServer:
    """Serves one engine on a Unix socket, or on TCP with a token; ``serve`` runs until the task is
    cancelled. On TCP port 0, ``port`` is the one the system chose once ``on_ready`` is called."""

    def __init__(self, engine: Engine, address: EngineAddress) -> None:
        self.engine, self.address = engine, address
        self.port = address.port if isinstance(address, TcpAddress) else 0

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        server = await self._listen()
        if on_ready is not None:
            on_ready()
        async with server:
            await server.serve_forever()

    async def _listen(self) -> asyncio.Server:
        if isinstance(self.address, TcpAddress):
            server = await asyncio.start_server(self._handle, self.address.host, self.port, backlog=BACKLOG)
            self.port = server.sockets[0].getsockname()[1]
            return server
        self.address.unlink(missing_ok=True)
        umask = os.umask(0o177)  # the socket is born 0600: only this user's processes ever connect
        try:
            return await asyncio.start_unix_server(self._handle, path=str(self.address), backlog=BACKLOG)
        finally:
            os.umask(umask)

    def _admits(self, message: Any) -> bool:
        if not isinstance(self.address, TcpAddress):
            return True
        token = message.get("token") if isinstance(message, dict) else None
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.address.token.encode())

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            message = await read_frame(reader)
            if not self._admits(message):
                refused = {"code": "engine_error", "message": "the engine refused a request without its token"}
                writer.write(pack({"error": {**refused, "param": None}}))
                await writer.drain()
                return
            request = _generation(message)
            if request is not None:
                await self._generate(request, reader, writer)
            else:
                writer.write(pack(await self._answer(message)))
                await writer.drain()
        except _LOST:
            pass  # the client went away; nothing of its request is left running
        except Exception as e:  # a frame that is not a request (another version's client?): say so
            log.warning("engine protocol: %s: %s", type(e).__name__, e)
            with contextlib.suppress(*_LOST):
                writer.write(pack(_malformed(e)))
                await writer.drain()
        finally:
            writer.close()

    async def _answer(self, message: Any) -> dict[str, Any]:
        op = message.get("op")
        try:
            if op == "prepare":
                await self.engine.prepare(request_from_json(message["request"]))
                return {"ok": True}
            if op == "embed":
                model, pooling = artifact_from_json(message["model"]), pooling_from_json(message["pooling"])
                return {"vectors": await self.engine.embed(model, message["batch"], pooling)}
            if op == "stats":
                return {"stats": self.engine.stats()}
            return {"error": {"code": "engine_error", "message": f"unknown operation {op!r}", "param": None}}
        except Exception as e:
            return error_to_wire(e)

    async def _generate(
        self, request: GenerationRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The client sends nothing more: a read that returns means it closed, and the sequence must stop.
        hangup = asyncio.ensure_future(reader.read(1))
        pump = asyncio.ensure_future(self._pump(request, writer))
        try:
            await asyncio.wait({hangup, pump}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            pump.cancel()  # closes the engine's stream, which frees the row
            await asyncio.gather(hangup, pump, return_exceptions=True)

    async def _pump(self, request: GenerationRequest, writer: asyncio.StreamWriter) -> None:
        stream = self.engine.generate(request)
        try:
            async for step in stream:
                writer.write(pack(step_to_wire(step)))
                await writer.drain()  # a slow reader holds this request back, and only this one
        except _LOST:
            raise
        except Exception as e:  # the stream started (or not): the client raises it either way
            writer.write(pack(error_to_wire(e)))
            await writer.drain()
        finally:
            await stream.aclose()


def _generation(message: Any) -> GenerationRequest | None:
    """The request of a ``generate`` frame; None for any other operation. Raises on a malformed one."""
    if not isinstance(message, dict):
        raise ProtocolError(f"a request must be a map, not {type(message).__name__}")
    return request_from_json(message["request"]) if message.get("op") == "generate" else None


def _malformed(e: Exception) -> dict[str, Any]:
    what = type(e).__name__
    message = f"the engine process could not read the request ({what}): are the server and it one version?"
    return {"error": {"code": "engine_error", "message": message, "param": None}}


# --- the API server's side -------------------------------------------------------------------------
# What an answer that cannot be read raises: not a crash to retry, a fault to report.
_GARBLED = (ProtocolError, msgpack.UnpackException, ValueError, TypeError, KeyError)


@contextlib.contextmanager
def _read_errors(label: str) -> Iterator[None]:
    """A connection that ends is the engine gone (retry); an answer that cannot be read is a fault."""
    try:
        yield
    except _LOST:
        raise _restarted(label) from None
    except _GARBLED as e:
        raise EngineFailed(f"the engine ({label}) answered something unreadable ({type(e).__name__})") from None


def _restarted(label: str) -> EngineRestarted:
    return EngineRestarted(f"the engine worker serving this request ({label}) stopped and is restarting; retry")


class EngineClient:
    """The ``Engine`` interface, spoken to one engine process (a serverless worker or an endpoint replica)."""

    def __init__(self, path: EngineAddress, name: str, label: str) -> None:
        self.path, self.name, self.label = path, name, label
        self.in_flight = 0  # requests sent and not yet answered in full: the router's load figure
        # When a request last was routed here, began or ended. A streamed request calls twice (``prepare``,
        # then ``generate``) with nothing in flight between: a replica being retired must stay quiet a
        # while before it is stopped, or that gap would cut the stream.
        self.last_active = time.monotonic()

    def touch(self) -> None:
        """A request was routed here and will call soon."""
        self.last_active = time.monotonic()

    def quiet_for(self, seconds: float) -> bool:
        """Nothing in flight, and nothing routed, begun or ended, for ``seconds``."""
        return self.in_flight == 0 and time.monotonic() - self.last_active >= seconds

    def start(self) -> None:
        pass  # the process is started and stopped by whoever spawned it

    def stop(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return probe(self.path) or {"engine": self.name, "models": {}}

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection; a full accept queue (EAGAIN: the process is alive and busy) is waited out, while
        a missing or refusing socket means the process is gone.

        The socket connects by hand: asyncio's own connect takes EAGAIN for "in progress" and waits for
        writability, which an unconnected Unix socket has at once, so a full queue would read as success
        and fail at the first write."""
        if isinstance(self.path, TcpAddress):
            try:
                connecting = asyncio.open_connection(self.path.host, self.path.port)
                return await asyncio.wait_for(connecting, CONNECT_PATIENCE_S)
            except (OSError, TimeoutError):
                raise _restarted(self.label) from None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        deadline = time.monotonic() + CONNECT_PATIENCE_S
        try:
            while True:
                try:
                    sock.connect(str(self.path))
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise EngineOverloaded(f"the engine ({self.label}) accepts no connections; retry") from None
                    await asyncio.sleep(0.01)
                except OSError:
                    raise _restarted(self.label) from None
            return await asyncio.open_unix_connection(sock=sock)
        except BaseException:
            sock.close()
            raise

    async def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.in_flight += 1
        self.touch()
        try:
            reader, writer = await self._connect()
            try:
                with _read_errors(self.label):
                    writer.write(pack(_signed(message, self.path)))
                    await writer.drain()
                    answer: dict[str, Any] = await read_frame(reader)
            finally:
                writer.close()
        finally:
            self.in_flight -= 1
            self.touch()
        if "error" in answer:
            raise error_from_wire(answer)
        return answer

    async def prepare(self, request: GenerationRequest) -> None:
        await self._call({"op": "prepare", "request": request_to_json(request)})

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        self.in_flight += 1
        self.touch()
        try:
            reader, writer = await self._connect()
            try:
                with _read_errors(self.label):
                    writer.write(pack(_signed({"op": "generate", "request": request_to_json(request)}, self.path)))
                    await writer.drain()
                    while True:
                        frame = await read_frame(reader)
                        if isinstance(frame, dict):
                            raise error_from_wire(frame)
                        step = step_from_wire(frame)
                        yield step
                        if step.finish_reason is not None:
                            return
            finally:
                writer.close()  # early, this is the cancellation: the worker sees end-of-file
        finally:
            self.in_flight -= 1
            self.touch()

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]:
        message = {"op": "embed", "model": artifact_to_json(model), "batch": batch, "pooling": pooling_to_json(pooling)}
        vectors: list[list[float]] = (await self._call(message))["vectors"]
        return vectors


def probe(path: EngineAddress, timeout: float = 1.0) -> dict[str, Any] | None:
    """The engine's ``stats()`` over its socket, blocking (readiness checks and scrapes run in threads);
    None when nothing answers in time."""
    try:
        with _blocking_connection(path, timeout) as sock:
            sock.sendall(pack(_signed({"op": "stats"}, path)))
            answer = read_frame_blocking(sock)
    except (OSError, ProtocolError, ValueError):
        return None
    stats: dict[str, Any] | None = answer.get("stats") if isinstance(answer, dict) else None
    return stats


def read_frame_blocking(sock: socket.socket) -> Any:
    """One frame from a blocking socket (the socket's timeout bounds each read)."""
    return msgpack.unpackb(_recv(sock, _length(_recv(sock, 4))))


def _blocking_connection(address: EngineAddress, timeout: float) -> socket.socket:
    if isinstance(address, TcpAddress):
        return socket.create_connection((address.host, address.port), timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(address))
    except OSError:
        sock.close()
        raise
    return sock


def _recv(sock: socket.socket, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = sock.recv(min(size - got, 1 << 20))
        if not chunk:
            raise ConnectionError("the engine closed the connection")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
