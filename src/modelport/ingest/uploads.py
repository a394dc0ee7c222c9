"""Archives sent straight to the API: whole (a streamed multipart body) or resumable (in parts).

Bytes go to ``<uploads_dir>/<file id>/`` as they arrive, hashed on the way, never held in memory.
A whole upload is written to ``archive.partial`` and renamed to ``archive`` only when complete, so an
interrupted one leaves nothing usable (``abort`` removes it at once; cleanup catches the rest).
A resumable upload declares its size and sha256 up front, and gets a sparse ``archive.partial`` of that
size; each part is written straight to its offset in it, and marked received (``parts/<n>``) only once
its bytes match the part's own sha256, in any order, as often as needed. ``complete`` hashes the whole
file once (no copy) against the declared sha256, and the ``file-…`` id becomes a model source.

Uploads count against the account's storage quota (``accounts/quotas.py``) and only
``quota_open_uploads`` may be receiving at once, both checked with the account locked as the upload
is created. A resumable upload counts its declared size from then on. A whole upload declares
nothing, so it counts what has arrived: its sink refuses bytes past the room the account had at the
last check, and every ``QUOTA_CHECK_BYTES`` (and at the end) it records its size and checks again,
which sees the other uploads' progress; concurrent uploads of one account can overshoot by at most
that much each, never by a whole upload.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import select

from modelport.accounts import quotas
from modelport.accounts.service import Principal
from modelport.errors import Conflict, InvalidRequest, NotFound, QuotaExceeded, UploadTooLarge
from modelport.ids import new_id
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import JobSecret, Upload, utcnow

DEFAULT_PART_BYTES = 64 * 2**20
QUOTA_CHECK_BYTES = 64 * 2**20  # a whole upload records its size and rechecks the quota this often
RECEIVING, COMPLETE = quotas.RECEIVING, "complete"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def archive_path(settings: Settings, upload_id: str) -> Path:
    """Where a finished upload's bytes are: what a job with this upload as its source unpacks."""
    return settings.uploads_dir / upload_id / "archive"


def partial_path(settings: Settings, upload_id: str) -> Path:
    """Where an upload's bytes are written until they are whole; renamed to ``archive_path`` then."""
    return settings.uploads_dir / upload_id / "archive.partial"


@dataclass(frozen=True)
class UploadView:
    upload: Upload
    received: list[int]
    missing: list[int]


class FileSink:
    """One whole upload being written; ``write`` as bytes arrive, then ``finish`` or ``abort``."""

    def __init__(self, uploads: Uploads, upload: Upload, limit: int, room: int | None) -> None:
        """``room``: bytes the account's storage quota had left when the upload began; None: no quota."""
        self.uploads, self.upload, self.limit = uploads, upload, limit
        self.folder = uploads.folder(upload.id)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.partial = partial_path(uploads.settings, upload.id)
        self._file: BinaryIO = open(self.partial, "wb")  # noqa: SIM115 - closed by finish/abort
        self._hash = hashlib.sha256()
        self.size = 0
        self._counted, self._room = 0, room  # size last recorded, and the room left at that check

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            self.abort()
            raise UploadTooLarge(
                f"the upload is larger than the limit of {self.limit} bytes (MODELPORT_MAX_UPLOAD_BYTES)"
            )
        if self._room is not None and (
            self.size - self._counted > self._room or self.size - self._counted >= QUOTA_CHECK_BYTES
        ):
            self._check_quota()
        self._file.write(data)
        self._hash.update(data)

    def _check_quota(self) -> None:
        """Record the size so far and check the account's quota again; refuse the upload past it."""
        try:
            self._room = self.uploads._record_size(self.upload, self.size)
        except QuotaExceeded:
            self.abort()
            raise
        self._counted = self.size

    def finish(self) -> Upload:
        self._file.close()
        if self.size == 0:
            self.abort()
            raise InvalidRequest("the uploaded file is empty", param="file")
        if self._room is not None and self.size != self._counted:
            self._check_quota()
        self.partial.rename(archive_path(self.uploads.settings, self.upload.id))
        return self.uploads._completed(self.upload.id, self.size, self._hash.hexdigest())

    def abort(self) -> None:
        self._file.close()
        self.uploads.discard(self.upload.id)


class Uploads:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings, self.db = settings, db

    def folder(self, upload_id: str) -> Path:
        return self.settings.uploads_dir / upload_id

    # --- whole uploads ---------------------------------------------------------------------------
    def begin(self, who: Principal, filename: str, purpose: str = "model") -> FileSink:
        upload = Upload(
            id=new_id("file"),
            account_id=who.account_id,
            filename=_safe_name(filename),
            purpose=purpose,
            status=RECEIVING,
        )
        with self.db.session() as s:
            quotas.lock_account(s, who.account_id)
            room = quotas.check_new_upload(s, self.settings, who.account_id, 0)
            s.add(upload)
        return FileSink(self, upload, self.settings.max_upload_bytes, room)

    def _record_size(self, upload: Upload, size: int) -> int | None:
        """A whole upload's bytes so far, recorded so that quota checks count them; the room left."""
        with self.db.session() as s:
            quotas.lock_account(s, upload.account_id)
            row = s.get(Upload, upload.id)
            if row is None:
                raise NotFound(f"upload {upload.id!r} was deleted while it was being received", param="upload_id")
            row.size = size
            s.flush()
            return quotas.check_upload_size(s, self.settings, upload.account_id)

    # --- resumable uploads -----------------------------------------------------------------------
    def create(self, who: Principal, filename: str, size: int, sha256: str | None, part_size: int | None) -> UploadView:
        """``sha256`` may be left out (a browser cannot hash a large file in one go); parts are still
        checked one by one and ``complete`` records the whole file's digest."""
        sha256 = sha256.lower() if sha256 else None
        if sha256 is not None and not _SHA256.match(sha256):
            raise InvalidRequest("sha256 must be the archive's 64-character hex digest", param="sha256")
        if not 0 < size <= self.settings.max_upload_bytes:
            raise UploadTooLarge(f"size must be between 1 and {self.settings.max_upload_bytes} bytes")
        part_size = part_size or DEFAULT_PART_BYTES
        if not 0 < part_size <= self.settings.upload_part_max_bytes:
            raise InvalidRequest(f"part_size must be at most {self.settings.upload_part_max_bytes}", param="part_size")
        upload = Upload(
            id=new_id("file"),
            account_id=who.account_id,
            filename=_safe_name(filename),
            size=size,
            sha256=sha256,
            part_size=part_size,
            status=RECEIVING,
        )
        with self.db.session() as s:
            quotas.lock_account(s, who.account_id)
            quotas.check_new_upload(s, self.settings, who.account_id, size)
            s.add(upload)
        (self.folder(upload.id) / "parts").mkdir(parents=True, exist_ok=True)
        with open(partial_path(self.settings, upload.id), "wb") as f:
            f.truncate(size)  # sparse: disk fills as parts arrive
        return self.view(who, upload.id)

    def part_length(self, upload: Upload, number: int) -> int:
        count = _part_count(upload)
        if not 1 <= number <= count:
            raise InvalidRequest(f"part numbers run from 1 to {count}", param="part")
        assert upload.part_size is not None
        return upload.part_size if number < count else upload.size - upload.part_size * (count - 1)

    def open_part(self, who: Principal, upload_id: str, number: int) -> tuple[Upload, Path, int, int]:
        """The file part ``number`` is written into, at which offset, and how long it must be."""
        upload = self._receiving(who, upload_id)
        assert upload.part_size is not None
        offset = (number - 1) * upload.part_size
        return upload, partial_path(self.settings, upload_id), offset, self.part_length(upload, number)

    def accept_part(self, upload: Upload, number: int, size: int, digest: str, claimed: str | None) -> None:
        """Mark the part received if it is whole and intact; otherwise it must be sent again."""
        expected = self.part_length(upload, number)
        if size != expected:
            raise InvalidRequest(f"part {number} has {size} bytes; it must have {expected}", param="part")
        if claimed is not None and digest != claimed.lower():
            raise InvalidRequest(
                f"part {number} is corrupted: its sha256 is {digest}, not {claimed}; send it again", param="part"
            )
        (self.folder(upload.id) / "parts" / str(number)).touch()

    def view(self, who: Principal, upload_id: str) -> UploadView:
        return self._view(self.get(who, upload_id))

    def _view(self, upload: Upload) -> UploadView:
        if upload.part_size is None or upload.status == COMPLETE:
            return UploadView(upload, [], [])
        parts = self.folder(upload.id) / "parts"
        have = {int(p.name) for p in parts.glob("[0-9]*") if p.name.isdigit()}
        numbers = range(1, _part_count(upload) + 1)
        return UploadView(upload, [n for n in numbers if n in have], [n for n in numbers if n not in have])

    def complete(self, who: Principal, upload_id: str) -> Upload:
        view = self.view(who, upload_id)
        upload = view.upload
        if upload.status == COMPLETE:
            return upload
        if upload.part_size is None:
            raise Conflict("this upload is still being received", param="upload_id")
        if view.missing:
            raise Conflict(f"parts still missing: {_ranges(view.missing)}", param="upload_id")
        digest = hashlib.sha256()
        with open(partial_path(self.settings, upload_id), "rb") as f:
            while chunk := f.read(4 * 2**20):
                digest.update(chunk)
        if upload.sha256 is not None and digest.hexdigest() != upload.sha256:
            raise InvalidRequest(
                f"the parts hash to {digest.hexdigest()}, not the declared {upload.sha256}", param="sha256"
            )
        partial_path(self.settings, upload_id).rename(archive_path(self.settings, upload_id))
        shutil.rmtree(self.folder(upload_id) / "parts", ignore_errors=True)
        return self._completed(upload_id, upload.size, digest.hexdigest())

    # --- shared ----------------------------------------------------------------------------------
    def get(self, who: Principal, upload_id: str) -> Upload:
        with self.db.read() as s:
            upload = s.get(Upload, upload_id)
        if upload is None or upload.account_id != who.account_id:
            raise NotFound(f"upload {upload_id!r} not found", param="upload_id")
        return upload

    def list(self, who: Principal) -> list[UploadView]:
        """The caller's uploads, newest first; an unfinished one says which parts it still needs."""
        query = select(Upload).where(Upload.account_id == who.account_id)
        with self.db.read() as s:
            rows = list(s.scalars(query.order_by(Upload.created_at.desc(), Upload.id.desc())))
        return [self._view(u) for u in rows]

    def delete(self, who: Principal, upload_id: str) -> None:
        """Remove the upload and its bytes, finished or not, unless a job is still reading it."""
        self.get(who, upload_id)
        with self.db.read() as s:
            # A job's secret row lives exactly while the job does, and holds its source.
            job_id = s.scalar(select(JobSecret.job_id).where(JobSecret.source == upload_id))
        if job_id is not None:
            raise Conflict(
                f"{upload_id} is the source of {job_id}, which has not finished; delete it once the job is done",
                param="upload_id",
            )
        self.discard(upload_id)

    def discard(self, upload_id: str) -> None:
        shutil.rmtree(self.folder(upload_id), ignore_errors=True)
        with self.db.session() as s:
            upload = s.get(Upload, upload_id)
            if upload is not None:
                s.delete(upload)

    def _receiving(self, who: Principal, upload_id: str) -> Upload:
        upload = self.get(who, upload_id)
        if upload.status == COMPLETE or upload.part_size is None:
            raise Conflict("this upload takes no more parts", param="upload_id")
        return upload

    def _completed(self, upload_id: str, size: int, sha256: str) -> Upload:
        with self.db.session() as s:
            upload = s.get(Upload, upload_id)
            assert upload is not None
            upload.size, upload.sha256, upload.status, upload.completed_at = size, sha256, COMPLETE, utcnow()
        return upload


def _part_count(upload: Upload) -> int:
    assert upload.part_size
    return max(1, -(-upload.size // upload.part_size))


def _safe_name(filename: str) -> str:
    # Only shown back to the user; never used as a path.
    return (filename.replace("\\", "/").rsplit("/", 1)[-1] or "upload")[:255]


def _ranges(numbers: list[int]) -> str:
    out, start = [], numbers[0]
    for prev, cur in zip(numbers, [*numbers[1:], None], strict=True):
        if cur != prev + 1 if cur is not None else True:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur if cur is not None else start
    return ", ".join(out)
