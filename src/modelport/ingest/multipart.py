"""Direct multipart uploads (Together v2 ``upload/create`` → ``PUT`` parts → ``upload/complete``), on disk.

Each file being uploaded is a session, ``<data_dir>/multipart/<upload id>/``: ``session.json`` (whose
it is, which model, the path, the ETag the client announced, the part count) and one file per part
received, ``<n>.part`` with its MD5 in ``<n>.md5``, written under a temporary name and renamed, so a
part is there whole or not at all. Parts are ``etags.PART_BYTES`` long except the last; a part longer
than that is cut off at its limit and refused.

With a store clients can write to directly (S3, ``DirectTransfer``) the parts go there instead, by
presigned URLs, and never cross this server: the session records the store's upload id (``remote``),
full parts are signed with their exact length, and completion joins them in the store and checks
the object's ETag and size. Completion checks every part's MD5 against what the
client says it got back, and the parts' combined ETag against the file's, then writes a *plan*
(``plans/<parts-id>.json``) that the ``parts`` source (``sources/parts.py``) turns into a staging tree
for the ordinary ingest job. Sessions and plans older than their time to live are removed by
``prune``; they hold nothing another session can reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modelport.errors import InvalidRequest, NotFound
from modelport.ids import PLAN_ID_PREFIX, new_id
from modelport.ingest import etags
from modelport.storage.blobs import DirectTransfer

MAX_PARTS = 10_000  # S3's own limit on parts per upload


@dataclass(frozen=True)
class UploadSession:
    upload_id: str
    account_id: str
    model_id: str
    path: str
    etag: str
    num_parts: int
    created: float
    remote: str | None = None  # the store's multipart upload id, when parts go straight to the store


@dataclass(frozen=True)
class PlannedFile:
    """A file of a revision being made: from an upload session's parts, or a blob already stored."""

    path: str
    etag: str
    upload_id: str | None = None
    sha256: str | None = None
    size: int | None = None


def check_path(path: str) -> str:
    """A relative POSIX path inside the model folder, as the client walks it (no hidden components)."""
    pure = PurePosixPath(path)
    if (
        not path
        or len(path) > 1024
        or "\\" in path
        or "\x00" in path
        or pure.is_absolute()
        or any(part in ("", ".", "..") or part.startswith(".") for part in path.split("/"))
    ):
        raise InvalidRequest(f"file path {path!r} must be relative, inside the model folder, with no hidden parts")
    return path


class PartStore:
    def __init__(self, root: Path, ttl_s: float, direct: DirectTransfer | None = None) -> None:
        self.root, self.ttl_s, self.direct = root, ttl_s, direct

    # --- sessions ----------------------------------------------------------------------------------
    def open(self, account_id: str, model_id: str, path: str, etag: str, num_parts: int) -> UploadSession:
        if not 1 <= num_parts <= MAX_PARTS:
            raise InvalidRequest(f"numParts of {path} must be between 1 and {MAX_PARTS}", param="numParts")
        upload_id = new_id("upload")
        remote = self.direct.start_upload(upload_id) if self.direct else None
        session = UploadSession(upload_id, account_id, model_id, check_path(path), etag, num_parts, time.time(), remote)
        folder = self.root / session.upload_id
        folder.mkdir(parents=True)
        _write_json(folder / "session.json", asdict(session))
        return session

    def session(self, upload_id: str) -> UploadSession:
        """The live session ``upload_id`` names; NotFound for another's id, a made-up one or an expired one."""
        if not upload_id.startswith("upload-") or "/" in upload_id or upload_id != Path(upload_id).name:
            raise NotFound(f"upload {upload_id!r} not found", param="uploadId")
        try:
            raw = json.loads((self.root / upload_id / "session.json").read_text())
        except (OSError, ValueError):
            raise NotFound(f"upload {upload_id!r} not found (it may have expired)", param="uploadId") from None
        session = UploadSession(**raw)
        if time.time() - session.created > self.ttl_s:
            raise NotFound(f"upload {upload_id!r} has expired; start the upload again", param="uploadId")
        return session

    async def write_part(self, session: UploadSession, number: int, body: AsyncIterator[bytes]) -> str:
        """Store one part from ``body``; returns its MD5 (hex), the ETag the client echoes at completion."""
        if not 1 <= number <= session.num_parts:
            raise InvalidRequest(f"part {number} is outside 1..{session.num_parts}", param="partNumber")
        folder = self.root / session.upload_id
        tmp = folder / f".{number}.{uuid.uuid4().hex[:8]}"
        digest, size = hashlib.md5(usedforsecurity=False), 0
        try:
            with open(tmp, "wb") as out:
                async for chunk in body:
                    size += len(chunk)
                    if size > etags.PART_BYTES:
                        raise InvalidRequest(f"a part holds at most {etags.PART_BYTES} bytes", param="partNumber")
                    digest.update(chunk)
                    out.write(chunk)
            md5 = digest.hexdigest()
            (folder / f"{number}.md5").write_text(md5)  # before the part: a present part always has its MD5
            os.replace(tmp, folder / f"{number}.part")
        finally:
            tmp.unlink(missing_ok=True)
        return md5

    def verify(self, session: UploadSession, parts: Sequence[tuple[int, str]], file_etag: str) -> int:
        """Every part is there, whole, with the MD5 the client got back; together they make ``file_etag``.
        Returns the file's size."""
        numbers = [n for n, _ in parts]
        if sorted(numbers) != list(range(1, session.num_parts + 1)):
            raise InvalidRequest(
                f"{session.path}: completion lists parts {sorted(numbers)[:8]}…, the upload has {session.num_parts}",
                param="parts",
            )
        if session.remote is not None:
            return self._verify_in_store(session, parts, file_etag)
        folder, size, md5s = self.root / session.upload_id, 0, []
        for number, claimed in sorted(parts):
            try:
                md5 = (folder / f"{number}.md5").read_text()
                length = (folder / f"{number}.part").stat().st_size
            except OSError:
                raise InvalidRequest(f"{session.path}: part {number} was never received", param="parts") from None
            if md5 != claimed.strip('"').lower():
                raise InvalidRequest(f"{session.path}: part {number}'s ETag does not match the part received")
            if number < session.num_parts and length != etags.PART_BYTES:
                raise InvalidRequest(f"{session.path}: part {number} is {length} bytes, not {etags.PART_BYTES}")
            size += length
            md5s.append(md5)
        if etags.combine(md5s) != file_etag.strip('"').lower() or file_etag != session.etag:
            raise InvalidRequest(f"{session.path}: the parts received do not make the file hash {file_etag}")
        return size

    def _verify_in_store(self, session: UploadSession, parts: Sequence[tuple[int, str]], file_etag: str) -> int:
        """Join the parts in the store (once: a repeated completion reads what the first one found)."""
        assert self.direct is not None and session.remote is not None
        claimed = [etag.strip('"').lower() for _, etag in sorted(parts)]
        if etags.combine(claimed) != file_etag.strip('"').lower() or file_etag != session.etag:
            raise InvalidRequest(f"{session.path}: the parts' ETags do not make the file hash {file_etag}")
        done = self.root / session.upload_id / "joined.json"
        if done.exists():
            joined = json.loads(done.read_text())
        else:
            etag, size = self.direct.finish_upload(session.upload_id, session.remote, sorted(parts))
            joined = {"etag": etag, "size": size}
            _write_json(done, joined)
        # S3 names a multipart object md5(part digests)-N, even for one part.
        digests = b"".join(bytes.fromhex(h) for h in claimed)
        expected = f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(claimed)}"
        longest = session.num_parts * etags.PART_BYTES
        if joined["etag"] != expected or not longest - etags.PART_BYTES < joined["size"] <= longest:
            raise InvalidRequest(f"{session.path}: the parts the store holds are not the ones the client sent")
        return int(joined["size"])

    def assemble(self, upload_id: str, dest: Path) -> str:
        """Write the uploaded file to ``dest``; returns its sha256."""
        folder = self.root / upload_id
        session = UploadSession(**json.loads((folder / "session.json").read_text()))
        if session.remote is not None and self.direct is not None:
            self.direct.fetch_upload(upload_id, dest)
            return _sha256_of(dest)
        digest = hashlib.sha256()
        with open(dest, "wb") as out:
            for n in range(1, session.num_parts + 1):
                with open(folder / f"{n}.part", "rb") as f:
                    while chunk := f.read(etags.READ):
                        digest.update(chunk)
                        out.write(chunk)
        return digest.hexdigest()

    # --- plans -------------------------------------------------------------------------------------
    def write_plan(self, files: Sequence[PlannedFile]) -> str:
        plan_id = f"{PLAN_ID_PREFIX}{uuid.uuid4()}"
        (self.root / "plans").mkdir(parents=True, exist_ok=True)
        _write_json(self.root / "plans" / f"{plan_id}.json", {"files": [asdict(f) for f in files]})
        return plan_id

    def plan(self, plan_id: str) -> list[PlannedFile]:
        if not plan_id.startswith(PLAN_ID_PREFIX) or plan_id != Path(plan_id).name:
            raise NotFound(f"upload plan {plan_id!r} not found")
        try:
            raw = json.loads((self.root / "plans" / f"{plan_id}.json").read_text())
        except (OSError, ValueError):
            raise NotFound(f"the files of {plan_id} are gone (the upload expired); upload them again") from None
        return [PlannedFile(**f) for f in raw["files"]]

    def prune(self, now: float | None = None) -> int:
        """Remove sessions and plans past their time to live; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for entry in list(self.root.glob("upload-*")) + list(self.root.glob("plans/*.json")):
            try:
                age = now - entry.stat().st_mtime
            except OSError:
                continue
            if age > self.ttl_s:
                self._drop_remote(entry)
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed += 1
        return removed

    def _drop_remote(self, entry: Path) -> None:
        try:
            remote = json.loads((entry / "session.json").read_text()).get("remote") if entry.is_dir() else None
        except (OSError, ValueError):
            return
        if remote and self.direct is not None:
            self.direct.drop_upload(entry.name, remote)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(etags.READ):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
