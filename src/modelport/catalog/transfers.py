"""Moving a model's files in and out by signed URLs (Together v2 ``upload/create``, ``upload/complete``
and ``download``; ``shared/WIRE-v2.md`` §5).

A signed URL carries no API key: it names one part of one upload session (``PUT``) or one file of one
revision (``GET``, with ``Range`` headers per part), expires after ``signed_url_ttl_s``, and is signed
with HMAC-SHA256 under a secret in ``<data_dir>/transfer-secret`` that every process on the data dir
shares. Which account may use it was decided when it was issued, so the routes that serve it ask
nothing else. Completion runs the same ingest job as every other upload; its revision is returned at
once, pending until the job has validated and admitted it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from sqlalchemy import select

from modelport import revisions
from modelport.accounts.service import Principal
from modelport.accounts.sessions import load_or_create_secret
from modelport.catalog.service import Catalog
from modelport.errors import AuthenticationError, InvalidRequest, NotFound
from modelport.ingest import etags
from modelport.ingest.multipart import PartStore, PlannedFile, UploadSession
from modelport.ingest.sources import SourceKind, SourceSpec
from modelport.jobs.states import RevisionStatus
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Model, ModelRevision, RevisionFile

SECRET_FILE = "transfer-secret"
# A file sent in parts, as ``upload/complete`` lists it: (path, ETag, upload id, [(part number, part ETag)]).
Uploaded = tuple[str, str, str, list[tuple[int, str]]]


class UrlSigner:
    def __init__(self, secret: bytes, ttl_s: float) -> None:
        self._secret, self.ttl_s = secret, ttl_s

    def query(self, *subject: str | int, now: float | None = None) -> str:
        """``expires=…&signature=…`` for the URL of ``subject`` (the route and its ids)."""
        expires = int((time.time() if now is None else now) + self.ttl_s)
        return f"expires={expires}&signature={self._sign(subject, expires)}"

    def check(self, subject: Sequence[str | int], expires: int, signature: str, now: float | None = None) -> None:
        if not hmac.compare_digest(self._sign(subject, expires), signature):
            raise AuthenticationError("this URL's signature is not valid for it")
        if expires < (time.time() if now is None else now):
            raise AuthenticationError("this URL has expired: ask for a new one")

    def _sign(self, subject: Sequence[str | int], expires: int) -> str:
        message = "\n".join([*map(str, subject), str(expires)]).encode()
        return base64.urlsafe_b64encode(hmac.new(self._secret, message, hashlib.sha256).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class FileToSend:
    """``upload/create``'s answer for one file: skipped (stored already), or its session and part URLs."""

    path: str
    skip: bool
    session: UploadSession | None = None
    urls: list[str] = field(default_factory=list)  # part n's at [n - 1]


@dataclass(frozen=True)
class FileToFetch:
    path: str
    etag: str
    size: int
    sha256: str
    parts: list[tuple[int, int, int]] = field(default_factory=list)  # (number, offset, length)


class Transfers:
    def __init__(self, settings: Settings, db: Database, blobs: BlobStore, catalog: Catalog, parts: PartStore) -> None:
        self.settings, self.db, self.blobs, self.catalog, self.parts = settings, db, blobs, catalog, parts
        self.signer = UrlSigner(load_or_create_secret(settings.data_dir / SECRET_FILE), settings.signed_url_ttl_s)

    # --- upload ------------------------------------------------------------------------------------
    def create_upload(
        self, who: Principal, ref: str, files: Sequence[tuple[str, str, int]], base_url: str
    ) -> list[FileToSend]:
        """``files``: (path, ETag, part count) as the client computed them. A file whose content the account
        already stores is skipped (never another account's: that would say what they store). ``base_url``:
        this server as the client reaches it, for part URLs it serves itself."""
        model = self.catalog.get_model(who, ref, created=True)
        self._check_listing([p for p, _, _ in files])
        declared = sum((n - 1) * etags.PART_BYTES + 1 for _, _, n in files)
        if declared > self.settings.max_artifact_bytes:
            raise InvalidRequest(
                f"these files are at least {declared} bytes, past this server's limit of "
                f"{self.settings.max_artifact_bytes} bytes per model"
            )
        stored = self._stored_etags(who, [h for _, h, _ in files])
        answer = []
        for path, etag, num_parts in files:
            if etag in stored:
                answer.append(FileToSend(path, skip=True))
                continue
            session = self.parts.open(who.account_id, model.id, path, etag, num_parts)
            urls = [self._part_url(base_url, session, n) for n in range(1, num_parts + 1)]
            answer.append(FileToSend(path, False, session, urls))
        return answer

    def _part_url(self, base_url: str, session: UploadSession, number: int) -> str:
        direct = self.parts.direct
        if direct is not None and session.remote is not None:
            # Every part but the last is exactly PART_BYTES: signed in, so the store refuses any other size.
            length = etags.PART_BYTES if number < session.num_parts else None
            return direct.part_url(session.upload_id, session.remote, number, length, self.signer.ttl_s)
        query = self.signer.query("put", session.upload_id, number)
        return f"{base_url}/v2/transfer/parts/{session.upload_id}/{number}?{query}"

    def _check_listing(self, paths: Sequence[str]) -> None:
        if not paths:
            raise InvalidRequest("files must not be empty", param="files")
        if len(paths) > self.settings.max_archive_members:
            raise InvalidRequest(
                f"{len(paths)} files is more than this server takes per model ({self.settings.max_archive_members})",
                param="files",
            )
        if len(set(paths)) != len(paths):
            raise InvalidRequest("a path is listed twice", param="files")

    def _stored_etags(self, who: Principal, wanted: Sequence[str]) -> dict[str, RevisionFile]:
        with self.db.read() as s:
            rows = s.scalars(
                select(RevisionFile)
                .join(ModelRevision, ModelRevision.id == RevisionFile.revision_id)
                .join(Model, Model.id == ModelRevision.model_id)
                .where(Model.account_id == who.account_id, RevisionFile.etag.in_(list(wanted)))
            )
            return {f.etag: f for f in rows if f.etag}

    def session_for_part(self, upload_id: str, number: int, expires: int, signature: str) -> UploadSession:
        self.signer.check(("put", upload_id, number), expires, signature)
        return self.parts.session(upload_id)

    def complete_upload(
        self, who: Principal, ref: str, uploaded: Sequence[Uploaded], skipped: Sequence[tuple[str, str]]
    ) -> str:
        """``uploaded``: (path, ETag, upload id, [(part number, part ETag)]); ``skipped``: (path, ETag).
        Returns the revision the files make: a new one, pending until its job has checked it, or the
        head itself when every file is the head's (an upload of what is already there changes nothing)."""
        model = self.catalog.get_model(who, ref, created=True)
        self._check_listing([p for p, *_ in uploaded] + [p for p, _ in skipped])
        planned = []
        for path, etag, upload_id, parts in uploaded:
            session = self.parts.session(upload_id)
            if session.account_id != who.account_id or session.model_id != model.id or session.path != path:
                raise NotFound(f"upload {upload_id!r} not found for {path}", param="uploadId")
            size = self.parts.verify(session, parts, etag)
            planned.append(PlannedFile(path, etag, upload_id=upload_id, size=size))
        stored = self._stored_etags(who, [etag for _, etag in skipped])
        for path, etag in skipped:
            row = stored.get(etag)
            if row is None:
                raise InvalidRequest(f"{path} was marked skipUpload, but no stored file has hash {etag}")
            planned.append(PlannedFile(path, etag, sha256=row.sha256, size=row.size))
        same = self._head_if_same(model, planned)
        if same is not None:
            return same
        plan_id = self.parts.write_plan(planned)
        spec = SourceSpec(SourceKind.PARTS, plan_id, f"direct upload of {len(planned)} files")
        return self.catalog.submit_revision(who, model.id, spec).revision_id

    def _head_if_same(self, model: Model, planned: Sequence[PlannedFile]) -> str | None:
        if model.revision_id is None or any(f.upload_id for f in planned):
            return None
        with self.db.read() as s:
            head = {(f.path, f.etag) for f in revisions.files(s, model.revision_id)}
        return model.revision_id if head == {(f.path, f.etag) for f in planned} else None

    # --- download and listing ----------------------------------------------------------------------
    def revision_for(self, who: Principal, ref: str, revision: str | None) -> tuple[Model, ModelRevision]:
        """The revision named (by id or number), else the head; a model with no ready revision has none."""
        model = self.catalog.get_model(who, ref, created=True)
        with self.db.read() as s:
            if revision:
                return model, revisions.require(s, model, revision)
            if model.revision_id is None:
                raise NotFound(f"{model.name} has no ready revision yet", param="revisionId")
            return model, revisions.require(s, model, model.revision_id)

    def files(self, revision: ModelRevision) -> list[FileToFetch]:
        """The revision's files with their ETags, computed (once, then stored) for files that came from
        a source that does not give them."""
        if revision.status != RevisionStatus.READY:
            return []
        with self.db.read() as s:
            rows = revisions.files(s, revision.id)
        missing = {f.path: self._etag_of(f.sha256) for f in rows if not f.etag}
        if missing:
            with self.db.session() as s:
                for f in s.scalars(select(RevisionFile).where(RevisionFile.revision_id == revision.id)):
                    f.etag = f.etag or missing.get(f.path)
        return [FileToFetch(f.path, f.etag or missing[f.path], f.size, f.sha256, _ranges(f.size)) for f in rows]

    def _etag_of(self, sha256: str) -> str:
        with self.blobs.open(sha256) as f:
            return etags.of_stream(f)

    def download_url(self, base: str, revision_id: str, f: FileToFetch) -> str:
        """The signed URL of one file of a revision (``GET``, with a ``Range`` per part): the store's own
        presigned URL where it has one, else this server's."""
        if self.parts.direct is not None:
            return self.parts.direct.blob_url(f.sha256, self.signer.ttl_s)
        return f"{base}/v2/transfer/files/{revision_id}/{quote(f.path)}?{self.signer.query('get', revision_id, f.path)}"

    def file_for_download(self, revision_id: str, path: str, expires: int, signature: str) -> RevisionFile:
        self.signer.check(("get", revision_id, path), expires, signature)
        with self.db.read() as s:
            row = s.get(RevisionFile, (revision_id, path))
        if row is None:
            raise NotFound("this file is no longer stored")
        return row


def _ranges(size: int) -> list[tuple[int, int, int]]:
    count = etags.parts_of(size)
    return [(n + 1, n * etags.PART_BYTES, min(etags.PART_BYTES, size - n * etags.PART_BYTES)) for n in range(count)]
