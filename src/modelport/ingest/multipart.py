"""Direct multipart uploads (Together v2 ``upload/create`` → ``PUT`` parts → ``upload/complete``), on disk.

Each file being uploaded is a session, ``<data_dir>/multipart/<upload id>/``: ``session.json`` (whose it
is, which model, the path, the ETag the client announced, the part count) and one file per part
received, ``<n>.<its md5>.part``, written under a temporary name and renamed, so a part is there whole
or not at all, and its name says what it holds. Parts are ``etags.PART_BYTES`` long except the last; a
part longer than that is cut off at its limit and refused. Completion checks every part's MD5 against
what the client says it got back, and the parts' combined ETag against the file's, then marks the
session completed (no part can be written after that, and a repeated completion answers what the first
one made) and writes a *plan* (``plans/<parts-id>.json``, with each part's verified MD5) that the
``parts`` source (``sources/parts.py``) turns into a staging tree, checking every part's MD5 again as it
joins them. Once the revision is made (or refused), ``release`` removes the plan and its sessions;
anything left behind is removed by ``prune`` after its time to live.

With a store clients can write to directly (S3, ``DirectTransfer``) the parts go there instead, by
presigned URLs, and never cross this server: the session records the store's upload id (``remote``),
full parts are signed with their exact length, and completion joins them in the store (after which the
object cannot be written through the part URLs) and checks the object's ETag and size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from modelport.errors import Conflict, InvalidRequest, NotFound
from modelport.ids import PLAN_ID_PREFIX, new_id
from modelport.ingest import etags
from modelport.storage.blobs import DirectTransfer

MAX_PARTS = 10_000  # S3's own limit on parts per upload
PART_ETAG = re.compile(r"[0-9a-f]{32}")
COMPLETED = "completed.json"


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
    md5s: list[str] = field(default_factory=list)  # the verified parts, in order (on this server's disk)


def normalize_etag(etag: str) -> str:
    """An ETag as stored and compared: without quotes, lower case."""
    return etag.strip().strip('"').lower()


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
        """A session for one file; everything about the file is checked before the store is asked."""
        check_path(path)
        if not 1 <= num_parts <= MAX_PARTS:
            raise InvalidRequest(f"numParts of {path} must be between 1 and {MAX_PARTS}", param="numParts")
        upload_id = new_id("upload")
        folder = self.root / upload_id
        folder.mkdir(parents=True)
        remote = self.direct.start_upload(upload_id) if self.direct else None
        session = UploadSession(
            upload_id, account_id, model_id, path, normalize_etag(etag), num_parts, time.time(), remote
        )
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

    def open_sessions(self, account_id: str) -> tuple[int, int]:
        """The account's sessions not yet completed, and the bytes they stand for: each its least possible
        size from its part count (as a resumable upload counts its declared size from the start), or what
        its parts hold, if more."""
        count = held = 0
        for folder in self.root.glob("upload-*"):
            try:
                raw = json.loads((folder / "session.json").read_text())
                owner, num_parts = raw["account_id"], int(raw["num_parts"])
            except (OSError, ValueError, KeyError):
                continue
            if owner == account_id and not (folder / COMPLETED).exists():
                count += 1
                received = sum(p.stat().st_size for p in folder.glob("*.part"))
                held += max(received, (num_parts - 1) * etags.PART_BYTES + 1)
        return count, held

    def completed(self, upload_id: str) -> str | None:
        """The revision a completed session made, or None."""
        try:
            return str(json.loads((self.root / upload_id / COMPLETED).read_text())["revision"])
        except (OSError, ValueError, KeyError):
            return None

    def mark_completed(self, upload_ids: Sequence[str], revision_id: str) -> None:
        for upload_id in upload_ids:
            _write_json(self.root / upload_id / COMPLETED, {"revision": revision_id})

    async def write_part(self, session: UploadSession, number: int, body: AsyncIterator[bytes]) -> str:
        """Store one part from ``body``; returns its MD5 (hex), the ETag the client echoes at completion."""
        if not 1 <= number <= session.num_parts:
            raise InvalidRequest(f"part {number} is outside 1..{session.num_parts}", param="partNumber")
        folder = self.root / session.upload_id
        if (folder / COMPLETED).exists():
            raise Conflict(f"upload {session.upload_id} is complete: its parts cannot change")
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
            os.replace(tmp, folder / f"{number}.{md5}.part")
        finally:
            tmp.unlink(missing_ok=True)
        if not (folder / COMPLETED).exists():  # a part sent again replaces the earlier one
            for older in folder.glob(f"{number}.*.part"):
                if older.name != f"{number}.{md5}.part":
                    older.unlink(missing_ok=True)
        return md5

    def verify(self, session: UploadSession, parts: Sequence[tuple[int, str]], file_etag: str) -> tuple[int, list[str]]:
        """Every part is there, whole, with the MD5 the client got back; together they make ``file_etag``.
        Returns the file's size and its parts' MD5s."""
        numbers = sorted(n for n, _ in parts)
        if numbers != list(range(1, session.num_parts + 1)):
            raise InvalidRequest(
                f"{session.path}: completion lists parts {numbers[:8]}…, the upload has {session.num_parts}",
                param="parts",
            )
        claimed = [normalize_etag(etag) for _, etag in sorted(parts)]
        if not all(PART_ETAG.fullmatch(md5) for md5 in claimed):  # they name files: nothing but an MD5
            raise InvalidRequest(f"{session.path}: a part's ETag is not an MD5 in hex", param="parts")
        if etags.combine(claimed) != normalize_etag(file_etag) or normalize_etag(file_etag) != session.etag:
            raise InvalidRequest(f"{session.path}: the parts' ETags do not make the file hash {file_etag}")
        if session.remote is not None:
            return self._verify_in_store(session, claimed), claimed
        folder, size = self.root / session.upload_id, 0
        for number, md5 in enumerate(claimed, start=1):
            part = folder / f"{number}.{md5}.part"
            if not part.exists():
                received = any(folder.glob(f"{number}.*.part"))
                if received:
                    raise InvalidRequest(f"{session.path}: part {number}'s ETag does not match the part received")
                raise InvalidRequest(f"{session.path}: part {number} was never received", param="parts")
            length = part.stat().st_size
            if number < session.num_parts and length != etags.PART_BYTES:
                raise InvalidRequest(f"{session.path}: part {number} is {length} bytes, not {etags.PART_BYTES}")
            size += length
        return size, claimed

    def _verify_in_store(self, session: UploadSession, claimed: list[str]) -> int:
        """Join the parts in the store (once: a repeated completion reads what the first one found)."""
        assert self.direct is not None and session.remote is not None
        done = self.root / session.upload_id / "joined.json"
        if done.exists():
            joined = json.loads(done.read_text())
        else:
            parts = list(enumerate(claimed, start=1))
            etag, size = self.direct.finish_upload(session.upload_id, session.remote, parts)
            joined = {"etag": normalize_etag(etag), "size": size}
            _write_json(done, joined)
        # S3 names a multipart object md5(part digests)-N, even for one part.
        digests = b"".join(bytes.fromhex(h) for h in claimed)
        expected = f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(claimed)}"
        longest = session.num_parts * etags.PART_BYTES
        if joined["etag"] != expected or not longest - etags.PART_BYTES < joined["size"] <= longest:
            raise InvalidRequest(f"{session.path}: the parts the store holds are not the ones the client sent")
        return int(joined["size"])

    def assemble(self, entry: PlannedFile, dest: Path) -> str:
        """Write an uploaded file to ``dest``, each part checked against the MD5 verified at completion;
        returns its sha256."""
        assert entry.upload_id is not None
        folder = self.root / entry.upload_id
        session = UploadSession(**json.loads((folder / "session.json").read_text()))
        if session.remote is not None and self.direct is not None:
            self.direct.fetch_upload(entry.upload_id, dest)  # the joined object: immutable since completion
            return _digest_of(dest, hashlib.sha256())
        digest = hashlib.sha256()
        with open(dest, "wb") as out:
            for number, expected in enumerate(entry.md5s, start=1):
                part = hashlib.md5(usedforsecurity=False)
                with open(folder / f"{number}.{expected}.part", "rb") as f:
                    while chunk := f.read(etags.READ):
                        part.update(chunk)
                        digest.update(chunk)
                        out.write(chunk)
                if part.hexdigest() != expected:
                    raise ValueError(f"part {number} of {entry.path} changed after the upload was completed")
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

    def release(self, plan_id: str) -> None:
        """The plan's revision is made or refused: remove the plan, its sessions and their objects."""
        try:
            planned = self.plan(plan_id)
        except NotFound:
            return
        for entry in planned:
            if entry.upload_id is not None:
                self._remove(self.root / entry.upload_id)
        (self.root / "plans" / f"{plan_id}.json").unlink(missing_ok=True)

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
                self._remove(entry)
                removed += 1
        return removed

    def _remove(self, entry: Path) -> None:
        if entry.is_dir():
            try:
                remote = json.loads((entry / "session.json").read_text()).get("remote")
            except (OSError, ValueError):
                remote = None
            if remote and self.direct is not None:
                self.direct.drop_upload(entry.name, remote)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _digest_of(path: Path, digest: Any) -> str:
    with open(path, "rb") as f:
        while chunk := f.read(etags.READ):
            digest.update(chunk)
    return str(digest.hexdigest())


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)
