"""Download one archive from an https:// URL (usually an S3 presigned URL) into the staging area."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx

from modelport.errors import SourceUnavailable
from modelport.ingest.sources.spec import SourceSpec
from modelport.ingest.staging import Progress

log = logging.getLogger(__name__)

_STATUS_HINTS = {
    400: "the URL was refused as malformed",
    401: "access denied: the URL is not signed or its signature is invalid",
    403: "access denied: the presigned URL has expired, was revoked, or its signature does not match",
    404: "no object at that URL: check the bucket and key",
}


def download(spec: SourceSpec, dest: Path, progress: Progress, *, timeout_s: float, limit: int) -> int:
    """Stream the URL into ``dest``; returns the byte count. Errors name the redacted URL only."""
    timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 30.0))
    try:
        with httpx.stream("GET", spec.url, timeout=timeout, follow_redirects=True) as resp:
            _raise_for_status(resp, spec)
            total = _content_length(resp)
            if total is not None and total > limit:
                raise SourceUnavailable(f"the archive is {total} bytes; the limit is {limit} bytes")
            size = _write(resp, dest, progress, total, limit)
    except httpx.HTTPError as e:
        raise SourceUnavailable(f"download from {spec.display} failed: {type(e).__name__}") from None
    if total is not None and size != total:
        raise SourceUnavailable(f"download from {spec.display} was truncated: {size} of {total} bytes")
    return size


def _write(resp: httpx.Response, dest: Path, progress: Progress, total: int | None, limit: int) -> int:
    size = 0
    with open(dest, "wb") as out:
        for chunk in resp.iter_raw():  # as bytes arrive: a fixed size would stall progress on slow links
            size += len(chunk)
            if size > limit:
                raise SourceUnavailable(f"the archive exceeds the limit of {limit} bytes")
            out.write(chunk)
            progress.bytes(size, total)
    return size


def _raise_for_status(resp: httpx.Response, spec: SourceSpec) -> None:
    if resp.status_code < 400:
        return
    hint = _STATUS_HINTS.get(resp.status_code, "the server refused the download")
    raise SourceUnavailable(f"HTTP {resp.status_code} from {spec.display}: {hint}")


def _content_length(resp: httpx.Response) -> int | None:
    value = resp.headers.get("content-length")
    return int(value) if value and value.isdigit() else None
