"""Classify a ``model_source`` string at submission time, before any job exists.

Accepted forms:
- ``org/name`` or ``org/name@revision``: a Hugging Face repo;
- ``https://huggingface.co/org/name`` (optionally ``/tree/<revision>``), or the same under the
  configured ``MODELPORT_HF_ENDPOINT``;
- any other ``https://`` URL: one archive (``.zip``, ``.tar``, ``.tar.gz``), typically an S3
  presigned URL, recognised later by its content, not its name.

A URL an HTTP client could not read (a broken IPv6 literal, a port that is not a number) is refused
as ``invalid_source`` at submission, and fails its job with ``fetch_refused`` if one was stored before
this check existed: never an exception from a parsing library.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import ParseResult, parse_qs, urlparse, urlunparse

from modelport.errors import FetchRefused, InvalidSource, PresignedUrlExpiring
from modelport.ids import PLAN_ID_PREFIX, UPLOAD_ID
from modelport.settings import MIN_PRESIGNED_VALIDITY_S, Settings

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_REVISION = re.compile(r"^[\w./-]{1,200}$")


class SourceKind(StrEnum):
    """Values are the wire values Together returns as ``model_source``."""

    HUGGINGFACE = "huggingface"
    REMOTE_ARCHIVE = "remote_archive"
    UPLOAD = "upload"  # a file-… id from /v0/models/upload or the resumable upload API
    PARTS = "parts"  # a parts-… plan of a direct multipart upload (Together v2); never named by users


@dataclass(frozen=True)
class SourceSpec:
    kind: SourceKind
    url: str  # the full source as given: may hold a signature, so never shown or logged
    display: str  # safe to show: signatures and credentials removed
    repo_id: str | None = None
    revision: str | None = None


def redact_url(url: str) -> str:
    """Drop the query string (where presigned signatures live) and any user:password."""
    parts = urlparse(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunparse((parts.scheme, netloc, parts.path, "", query, ""))


def parse_source(raw: str, settings: Settings, *, submission: bool = True) -> SourceSpec:
    """``submission``: also refuse what would fail later (expiring signatures, refused addresses);
    a job re-reading its own source leaves that to the fetch, which checks again."""
    raw = raw.strip()
    if not raw:
        raise InvalidSource("model_source is empty", param="model_source")
    if UPLOAD_ID.match(raw):
        return SourceSpec(SourceKind.UPLOAD, raw, raw)
    if raw.startswith(PLAN_ID_PREFIX) and not submission:  # made by ``upload/complete``, read by its job
        return SourceSpec(SourceKind.PARTS, raw, "direct upload")
    if "://" not in raw:
        return _hf_repo(raw, raw)
    parts = _parse_url(raw, submission)
    hub_hosts = {"huggingface.co", "www.huggingface.co", urlparse(settings.hf_endpoint).netloc}
    if parts.scheme in ("http", "https") and parts.netloc in hub_hosts:
        return _hf_url(raw, parts.path)
    if parts.scheme == "https" or (parts.scheme == "http" and settings.fetch_allow_http):
        if submission:
            _check_reachable(raw, settings)
            check_presigned_validity(raw, datetime.now(UTC))
        return SourceSpec(SourceKind.REMOTE_ARCHIVE, raw, redact_url(raw))
    if parts.scheme == "http":
        raise InvalidSource(
            "plain http:// sources are refused; use an https:// URL, or for an on-prem store the server's "
            "administrator sets MODELPORT_FETCH_ALLOW_HTTP=true (and MODELPORT_FETCH_ALLOW for a private address)",
            param="model_source",
        )
    raise InvalidSource(
        f"unsupported source scheme {parts.scheme!r}: give a Hugging Face repo (org/name) "
        "or an https:// URL to a .zip/.tar/.tar.gz archive (for S3, a presigned URL)",
        param="model_source",
    )


def _parse_url(url: str, submission: bool) -> ParseResult:
    from modelport.ingest.sources.guard import parse_url

    try:
        return parse_url(url)
    except FetchRefused as e:
        if not submission:
            raise  # a job's stored source: the job fails with fetch_refused
        raise InvalidSource(e.message, param="model_source") from None


def _check_reachable(url: str, settings: Settings) -> None:
    """Refuse at once what the SSRF guard would refuse at fetch time without DNS (literal addresses in
    any spelling, localhost); names are resolved and checked again on every connection."""
    from modelport.ingest.sources.guard import FetchPolicy

    try:
        FetchPolicy.from_settings(settings).check_url(url)
    except FetchRefused as e:
        raise InvalidSource(e.message, param="model_source") from None


def _hf_repo(text: str, display: str) -> SourceSpec:
    repo_id, _, revision = text.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or (revision and not _REVISION.match(revision)):
        raise InvalidSource(
            f"{display!r} is neither a Hugging Face repo id (org/name[@revision]) nor an https:// URL",
            param="model_source",
        )
    return SourceSpec(SourceKind.HUGGINGFACE, text, display, repo_id=repo_id, revision=revision or None)


def _hf_url(raw: str, path: str) -> SourceSpec:
    segments = [s for s in path.split("/") if s]
    if len(segments) >= 4 and segments[2] == "tree":
        return _hf_repo(f"{segments[0]}/{segments[1]}@{'/'.join(segments[3:])}", redact_url(raw))
    if len(segments) != 2:
        raise InvalidSource(
            "a Hugging Face URL must name a model repo: https://huggingface.co/org/name", param="model_source"
        )
    return _hf_repo("/".join(segments), redact_url(raw))


def check_presigned_validity(url: str, now: datetime) -> None:
    """Refuse presigned URLs that would expire before a long download could finish."""
    expires = presigned_expiry(url)
    if expires is None:
        return
    remaining = (expires - now).total_seconds()
    if remaining < MIN_PRESIGNED_VALIDITY_S:
        state = "has expired" if remaining <= 0 else f"expires in {int(remaining // 60)} minutes"
        raise PresignedUrlExpiring(
            f"the presigned URL {state}; it must stay valid for at least "
            f"{MIN_PRESIGNED_VALIDITY_S // 60} minutes. Generate a new one, for example "
            "`aws s3 presign s3://bucket/model.tar.gz --expires-in 21600`",
            param="model_source",
        )


def presigned_expiry(url: str) -> datetime | None:
    """The expiry of a SigV4 (X-Amz-Date + X-Amz-Expires) or SigV2 (Expires) presigned URL."""
    query = {k.lower(): v[0] for k, v in parse_qs(urlparse(url).query).items()}
    try:
        if "x-amz-date" in query and "x-amz-expires" in query:
            signed = datetime.strptime(query["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            return signed + timedelta(seconds=int(query["x-amz-expires"]))
        if "expires" in query and ("signature" in query or "awsaccesskeyid" in query):
            return datetime.fromtimestamp(int(query["expires"]), UTC)
    except (ValueError, OverflowError) as e:
        raise InvalidSource("the presigned URL's expiry fields are malformed", param="model_source") from e
    return None
