"""Read one archive from an https:// URL (usually an S3 presigned URL) without a local copy.

Two readers over the same URL:

- ``ResumableStream``: a forward-only file object over one long GET, whose response headers give the
  size, the ETag and (``Accept-Ranges``) whether it can be resumed. On a transient failure
  (connection reset, stall past the timeout, early end of body) it reconnects with
  ``Range: bytes=<pos>-`` and ``If-Range: <etag>`` and carries on, a bounded number of times.
- ``RangeFile``: a seekable file object that reads windows with ranged GETs, for zip archives whose
  directory sits at the end. Only used when the server honours ``Range``.

Both ask for ``identity`` and decode nothing: the stream reads the body's raw bytes (what S3 stored,
even under a ``Content-Encoding`` label; the archive reader recognises a gzip layer by its content and
inflates it under its own ratio limit), and a ranged read refuses an encoded answer outright, since
its offsets come from the zip's directory, and reads at most the bytes it asked for. Every chunk is
reported to the job's ``DownloadBudget`` (rate floor and deadline, ``budget.py``) as it arrives.

Errors never include the URL's query string (where presigned signatures live). Every connection,
redirects included, goes through the SSRF guard (``guard.py``).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from modelport.errors import SourceUnavailable
from modelport.ingest.sources.budget import DownloadBudget
from modelport.ingest.sources.guard import FetchPolicy, content_encoding, guarded_client, refuse_encoded
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import ChunkReader

log = logging.getLogger(__name__)

_STATUS_HINTS = {
    400: "the URL was refused as malformed",
    401: "access denied: the URL is not signed or its signature is invalid",
    403: "access denied: the presigned URL has expired, was revoked, or its signature does not match",
    404: "no object at that URL: check the bucket and key",
    416: "the object is shorter than the server announced (a truncated upload?)",
}
_TRANSIENT = (httpx.TransportError, httpx.RemoteProtocolError)
RANGE_WINDOW = 8 * 2**20


@dataclass(frozen=True)
class SourceInfo:
    size: int | None
    ranges: bool  # the server announced "Accept-Ranges: bytes"
    etag: str | None
    encoding: str | None = None  # a Content-Encoding label; the bytes are read as stored, never decoded


class _Client:
    def __init__(
        self, spec: SourceSpec, policy: FetchPolicy, timeout_s: float, retries: int, budget: DownloadBudget
    ) -> None:
        self.spec, self.retries, self.budget = spec, retries, budget
        # The read timeout is the stall timeout: no byte for that long and the attempt is retried.
        self.http: httpx.Client = guarded_client(
            policy,
            read_raw=True,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0)),
            follow_redirects=True,
        )

    def close(self) -> None:
        self.http.close()

    def fail(self, resp: httpx.Response) -> SourceUnavailable:
        hint = _STATUS_HINTS.get(resp.status_code, "the server refused the download")
        return SourceUnavailable(f"HTTP {resp.status_code} from {self.spec.display}: {hint}")

    def transport_error(self, e: Exception) -> SourceUnavailable:
        return SourceUnavailable(
            f"download from {self.spec.display} failed after {self.retries} retries: {type(e).__name__}"
        )

    def backoff(self, attempt: int) -> None:
        self.budget.check_deadline()
        time.sleep(min(0.2 * 2**attempt, 5.0))


def _info_from(resp: httpx.Response) -> SourceInfo:
    length = resp.headers.get("content-length")
    ranges = resp.headers.get("accept-ranges", "").lower() == "bytes"
    size = int(length) if length and length.isdigit() else None
    return SourceInfo(size, ranges, resp.headers.get("etag"), content_encoding(resp))


class ResumableStream:
    """Forward-only reads over one GET that survives transient failures by resuming with Range."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        policy: FetchPolicy,
        timeout_s: float,
        retries: int,
        budget: DownloadBudget,
        on_bytes: Callable[[int], None],
    ) -> None:
        self.client = _Client(spec, policy, timeout_s, retries, budget)
        self.on_bytes = on_bytes
        self._info: SourceInfo | None = None
        self.position = 0
        self._resp: httpx.Response | None = None
        self._chunks: object = None
        self._failures = 0
        self._reader = ChunkReader(self._counted_chunk)

    @property
    def info(self) -> SourceInfo:
        """Size, range support and ETag; the first access sends the GET and waits for its headers."""
        if self._info is None:
            self.peek(1)
        assert self._info is not None
        return self._info

    def peek(self, n: int) -> bytes:
        return self._reader.peek(n)

    def _open(self) -> None:
        headers = {"Accept-Encoding": "identity"}
        if self.position:
            assert self._info is not None
            if not self._info.ranges:
                size = "?" if self._info.size is None else self._info.size
                raise SourceUnavailable(
                    f"download from {self.client.spec.display} was cut off at byte {self.position} of "
                    f"{size} and the server does not support resuming"
                )
            headers["Range"] = f"bytes={self.position}-"
            if self._info.etag:
                headers["If-Range"] = self._info.etag  # the object changed: start over rather than splice
        req = self.client.http.build_request("GET", self.client.spec.url, headers=headers)
        self._resp = self.client.http.send(req, stream=True)
        if self._resp.status_code >= 400:
            raise self.client.fail(self._resp)
        if self._info is None:
            self._info = _info_from(self._resp)
            if self._info.encoding:
                log.info(
                    "%s labels its body Content-Encoding: %s; reading the bytes as stored",
                    self.client.spec.display,
                    self._info.encoding,
                )
        elif self.position and (self._resp.status_code != 206 or content_encoding(self._resp) != self._info.encoding):
            raise SourceUnavailable(f"{self.client.spec.display} changed while it was being downloaded")
        self._chunks = self._resp.iter_raw()  # raw: never decoded here (see the module doc)

    def _next_chunk(self) -> bytes:
        while True:
            try:
                if self._resp is None:
                    self._open()
                chunk = next(self._chunks, b"")  # type: ignore[call-overload]
                if chunk or self._complete():
                    return bytes(chunk)
                raise httpx.RemoteProtocolError("body ended early")
            except _TRANSIENT as e:
                self._drop()
                self._failures += 1
                if self._failures > self.client.retries:
                    raise self.client.transport_error(e) from None
                log.info(
                    "download of %s broke at byte %d (%s); resuming",
                    self.client.spec.display,
                    self.position,
                    type(e).__name__,
                )
                self.client.backoff(self._failures - 1)

    def _complete(self) -> bool:
        size = self._info.size if self._info else None
        return size is None or self.position >= size

    def _drop(self) -> None:
        if self._resp is not None:
            self._resp.close()
        self._resp = None

    def _counted_chunk(self) -> bytes:
        chunk = self.client.budget.timed(self._next_chunk)
        self.position += len(chunk)
        size = self._info.size if self._info else None
        if size is not None and self.position > size:
            raise SourceUnavailable(f"{self.client.spec.display} sent more bytes than its Content-Length ({size})")
        if chunk:
            self.on_bytes(len(chunk))
        return chunk

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._drop()
        self.client.close()


class Prefetched:
    """Reads ahead on its own thread into a bounded queue, so the network and the inflater overlap."""

    def __init__(self, source: ResumableStream, *, chunk: int = 2**20, depth: int = 16) -> None:
        self.source = source
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)  # bounds memory
        self._stop = threading.Event()
        self._done = False
        self._reader = ChunkReader(self._take)
        self._thread = threading.Thread(target=self._run, args=(chunk,), name="prefetch", daemon=True)
        self._thread.start()

    def _run(self, chunk: int) -> None:
        try:
            while not self._stop.is_set():
                data = self.source.read(chunk)
                self._queue.put(data)
                if not data:
                    return
        except BaseException as e:  # handed to the reading thread
            self._queue.put(e)

    def _take(self) -> bytes:
        if self._done:
            return b""
        item = self._queue.get()
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._done = not item
        return item

    def read(self, n: int = -1) -> bytes:
        return self._reader.read(n)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a put() on a full queue
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self.source.close()


class RangeFile:
    """A seekable, read-only file over ranged GETs, reading ``RANGE_WINDOW`` bytes at a time."""

    def __enter__(self) -> RangeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __init__(
        self,
        spec: SourceSpec,
        info: SourceInfo,
        *,
        policy: FetchPolicy,
        timeout_s: float,
        retries: int,
        budget: DownloadBudget,
        on_bytes: Callable[[int], None],
    ) -> None:
        assert info.ranges and info.size is not None
        self.client = _Client(spec, policy, timeout_s, retries, budget)
        self.size, self.etag, self.on_bytes = info.size, info.etag, on_bytes
        self._pos = 0
        self._window_start, self._window = 0, b""

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size - self._pos
        out = bytearray()
        while len(out) < n and self._pos < self.size:
            offset = self._pos - self._window_start
            if not 0 <= offset < len(self._window):
                self._fetch(self._pos, max(n - len(out), RANGE_WINDOW))
                offset = 0
            piece = self._window[offset : offset + n - len(out)]
            out += piece
            self._pos += len(piece)
        return bytes(out)

    def _fetch(self, start: int, length: int) -> None:
        end = min(self.size, start + length) - 1
        headers = {"Range": f"bytes={start}-{end}", "Accept-Encoding": "identity"}
        if self.etag:
            headers["If-Match"] = self.etag
        for attempt in range(self.client.retries + 1):
            try:
                self._window_start, self._window = start, self._get(headers, end - start + 1)
                return
            except _TRANSIENT as e:
                if attempt == self.client.retries:
                    raise self.client.transport_error(e) from None
                self.client.backoff(attempt)

    def _get(self, headers: dict[str, str], wanted: int) -> bytes:
        """One ranged GET: at most ``wanted`` raw bytes, never decoded, each chunk counted as it arrives."""
        display = self.client.spec.display
        with self.client.http.stream("GET", self.client.spec.url, headers=headers) as resp:
            if resp.status_code == 412:
                raise SourceUnavailable(f"{display} changed while it was being read")
            if resp.status_code != 206:
                raise (
                    self.client.fail(resp)
                    if resp.status_code >= 400
                    else SourceUnavailable(f"{display} stopped honouring range requests")
                )
            refuse_encoded(resp)  # offsets come from the zip's directory: an encoded range is not those bytes
            chunks = resp.iter_raw()
            body = bytearray()
            while chunk := self.client.budget.timed(lambda: next(chunks, b"")):
                body += chunk
                if len(body) > wanted:
                    raise SourceUnavailable(
                        f"{display} answered a range request with more than the {wanted} bytes asked for"
                    )
                self.on_bytes(len(chunk))
        if not body:
            raise SourceUnavailable(f"{display} answered a range request with no bytes")
        return bytes(body)

    def close(self) -> None:
        self.client.close()
