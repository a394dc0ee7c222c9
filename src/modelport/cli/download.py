"""Fetch a revision's files by Together v2's download protocol (``shared/WIRE-v2.md`` §5 "Download").

The server answers a plan: each file's path, size and S3 multipart ETag, and per part a signed URL and
the ``Range`` header to send with it. A signed URL is its own permission and may be a blob store's
presigned URL, so the API key never goes with it. Each file is written under a temporary name beside
its destination and renamed into place only once its size and ETag match: an interrupted download
leaves no file that looks complete, and the same command run again fetches only what is missing.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import httpx

from modelport import __version__
from modelport.cli.client import Client, NotFoundError
from modelport.cli.errors import CODE_HINTS, CliFailure, in_flags
from modelport.ingest import etags

# As for upload (WIRE-v2.md §5): a 5xx, a 429 or a network error is tried 5 times in all, sleeping 1, 2, 4, 8 s.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CHUNK_BYTES = 1 << 20
AGAIN = "run the same command again: the files already complete are skipped"
# Where a 404 about the plan is not about the model (cli/errors.py's table hints `models list` then).
NOT_FOUND_HINTS = {
    "paths": "`modelport models get {model}` lists its files",
    "revision": "`modelport models revisions {model}` lists its revisions",
    "revisionId": "`modelport models revisions {model}` lists its revisions",
}

OnProgress = Callable[[int], None]


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class RemoteFile:
    path: str
    etag: str
    size: int
    parts: list[Part]

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> RemoteFile:
        parts = [
            Part(
                int(p["partNumber"]),
                int(p["sizeBytes"]),
                str(p["url"]),
                {str(k): str(v) for k, v in p["headers"].items()},
            )
            for p in raw["parts"]
        ]
        f = cls(str(raw["path"]), str(raw["hash"]).strip('"'), int(raw["sizeBytes"]), parts)
        if sum(p.size for p in parts) != f.size or any(p.size < 0 for p in parts):
            raise ValueError(f"the parts of {f.path} do not add up to its {f.size} bytes")
        return f


@dataclass(frozen=True)
class Plan:
    revision_id: str
    files: list[RemoteFile]


@dataclass(frozen=True)
class Placed:
    """A file of the plan and where it goes."""

    file: RemoteFile
    dest: Path


def fetch_plan(client: Client, model: str, paths: Sequence[str], revision: str | None) -> Plan:
    """The server's plan for ``model`` (``name@N`` pins a revision): every file, or ``paths``."""
    shown = model.partition("@")[0]
    try:
        answer = client.download_plan(model, paths, revision)
    except NotFoundError as e:
        if hint := NOT_FOUND_HINTS.get(e.param or ""):
            raise CliFailure(in_flags(e.message), hint=hint.format(model=shown), exit_code=4) from e
        raise
    try:
        plan = Plan(str(answer["revisionId"]), [RemoteFile.from_wire(f) for f in answer["files"]])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        message = f"the server's download plan is not one this CLI reads: {e!r}"
        raise CliFailure(message, hint=CODE_HINTS["http_error"]) from e
    if not plan.files:
        raise CliFailure(
            f"revision {plan.revision_id} of {shown} has no files to download",
            hint=f"only a ready revision has files: `modelport models revisions {shown}` shows their status",
        )
    return plan


def place(plan: Plan, root: Path) -> list[Placed]:
    """Where each file goes under ``root``; refuses the whole plan if a path would leave it.

    The server checks paths when files arrive; this is the second line, so a server (or a store
    it points at) that lists ``../x`` or ``/etc/x`` cannot make the CLI write outside ``root``."""
    base = root.resolve()
    placed, refused, seen = [], [], set()
    for f in plan.files:
        dest = _inside(base, f.path)
        if dest is None or dest in seen:
            refused.append(f.path)
        else:
            placed.append(Placed(f, dest))
            seen.add(dest)
    if refused:
        listed = ", ".join(repr(p) for p in refused)
        raise CliFailure(
            f"refusing to download: the server listed paths outside {root} or twice: {listed}",
            hint="nothing was written; the server's administrator should look at this model's files",
        )
    return placed


def _inside(base: Path, path: str) -> Path | None:
    names = path.split("/")
    if "\\" in path or "\x00" in path or any(n in ("", ".", "..") for n in names):
        return None
    # The folders on the way are resolved (a symlink among them must stay inside); the file itself is
    # not: an existing symlink there is replaced, never written through.
    parent = (base / PurePosixPath(path).parent).resolve()
    return parent / names[-1] if parent.is_relative_to(base) else None


def is_current(placed: Placed) -> bool:
    """The local file is already this one: same size and ETag."""
    dest, f = placed.dest, placed.file
    try:
        # No hash yet (the server computes it for older files in the background): nothing to compare.
        return bool(f.etag) and dest.is_file() and dest.stat().st_size == f.size and etags.of_file(dest) == f.etag
    except OSError:
        return False


def signed_url_client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """For the part URLs: no API key (the signature is the permission), redirects followed, and no
    compression (sizes and ``Range`` are the stored bytes')."""
    headers = {"User-Agent": f"modelport-cli/{__version__}", "Accept-Encoding": "identity"}
    timeout = httpx.Timeout(60.0, connect=30.0)
    return httpx.Client(headers=headers, follow_redirects=True, timeout=timeout, transport=transport)


def fetch(http: httpx.Client, placed: Placed, on_progress: OnProgress = lambda n: None) -> None:
    """Download one file, part by part, to a temporary name beside it; rename it into place once verified."""
    f, dest = placed.file, placed.dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(tmp, "xb") as out:
            offset = 0
            for part in f.parts:
                if part.size:
                    _fetch_part(http, f.path, part, out, offset, on_progress)
                offset += part.size
        _verify(tmp, f)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class _Retry(Exception):
    """A failure worth another try; ``failure`` is what to say once the tries are spent."""

    def __init__(self, failure: CliFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


@dataclass
class _Tally:
    report: OnProgress
    total: int = 0

    def __call__(self, n: int) -> None:
        self.total += n
        self.report(n)

    def undo(self) -> None:
        self.report(-self.total)


def _fetch_part(http: httpx.Client, path: str, part: Part, out: BinaryIO, offset: int, on_progress: OnProgress) -> None:
    for delay in (*RETRY_DELAYS_S, None):
        tally = _Tally(on_progress)
        try:
            out.seek(offset)
            _receive(http, path, part, out, tally)
            return
        except _Retry as e:
            tally.undo()  # the bar goes back: this part starts again
            if delay is None:
                raise e.failure from e
            time.sleep(delay)


def _receive(http: httpx.Client, path: str, part: Part, out: BinaryIO, count: OnProgress) -> None:
    where = f"{path}, part {part.number} (from {urlsplit(part.url).netloc})"  # never the URL: it is a credential
    try:
        with http.stream("GET", part.url, headers=part.headers) as resp:
            if resp.status_code not in (200, 206):
                _refused(where, resp.status_code)
            got = 0
            for chunk in resp.iter_bytes(CHUNK_BYTES):
                got += len(chunk)
                if got > part.size:  # e.g. a whole file for a Range the store ignored
                    raise CliFailure(f"{where}: the answer is longer than the part's {part.size} bytes", hint=AGAIN)
                out.write(chunk)
                count(len(chunk))
    except httpx.TransportError as e:
        raise _Retry(CliFailure(f"{where}: {type(e).__name__}", hint=AGAIN, exit_code=6)) from e
    if got < part.size:
        raise _Retry(CliFailure(f"{where}: got {got} of the part's {part.size} bytes", hint=AGAIN))


def _refused(where: str, status: int) -> None:
    if status in (401, 403):
        hint = f"the download links last a limited time (the server's MODELPORT_SIGNED_URL_TTL_S); {AGAIN}"
        raise CliFailure(f"{where}: refused (HTTP {status})", hint=hint)
    failure = CliFailure(f"{where}: HTTP {status}", hint=AGAIN)
    if status in RETRY_STATUSES:
        raise _Retry(failure)
    raise failure


def _verify(tmp: Path, f: RemoteFile) -> None:
    size = tmp.stat().st_size
    if size != f.size:
        raise CliFailure(f"{f.path}: downloaded {size} bytes, not {f.size}", hint=AGAIN)
    if f.etag and (etag := etags.of_file(tmp)) != f.etag:
        raise CliFailure(
            f"{f.path}: the downloaded bytes do not match its hash (ETag {etag}, not {f.etag})",
            hint=f"{AGAIN}; if it happens again, the server's stored copy may be damaged",
        )
