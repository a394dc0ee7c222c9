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
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

from anyio.to_thread import run_sync
from sqlalchemy import select, update

from modelport import revisions
from modelport.accounts import quotas
from modelport.accounts.service import Principal
from modelport.accounts.sessions import load_or_create_secret
from modelport.catalog.service import Catalog
from modelport.errors import AuthenticationError, InvalidRequest, NotFound, QuotaExceeded
from modelport.ingest import etags
from modelport.ingest.multipart import MAX_PARTS, PartStore, PlannedFile, UploadSession, check_path, normalize_etag
from modelport.ingest.sources import SourceKind, SourceSpec
from modelport.jobs.states import RevisionStatus
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Model, ModelRevision, RevisionFile

SECRET_FILE = "transfer-secret"
INLINE_ETAG_BYTES = 64 * 2**20  # missing ETags a request may compute itself
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
        this server as the client reaches it, for part URLs it serves itself.

        Everything is checked before any session exists: the paths, the number of files, their least
        possible size against the per-model limit and, with the account locked, against its storage quota
        (with the parts its open sessions already hold) and its cap on open sessions."""
        model = self.catalog.get_model(who, ref, created=True)
        self._check_listing([p for p, _, _ in files])
        for path, _, num_parts in files:
            if not 1 <= num_parts <= MAX_PARTS:
                raise InvalidRequest(f"numParts of {path} must be between 1 and {MAX_PARTS}", param="numParts")
        stored = self._stored_etags(who, [normalize_etag(h) for _, h, _ in files])
        todo = [(p, normalize_etag(h), n) for p, h, n in files if normalize_etag(h) not in stored]
        declared = sum((n - 1) * etags.PART_BYTES + 1 for _, _, n in todo)
        self._check_size(declared, "these files are at least")
        with self.db.session() as s:
            quotas.lock_account(s, who.account_id)  # two creates at once see each other's sessions
            sessions, held = self.parts.open_sessions(who.account_id)
            if sessions + len(todo) > self.max_open_sessions:
                raise QuotaExceeded(
                    f"this account has {sessions} file uploads open; at most {self.max_open_sessions} may be: "
                    "complete them, or wait for them to expire"
                )
            quotas.check_storage(s, self.settings, who.account_id, held + declared)
            opened = {p: self.parts.open(who.account_id, model.id, p, h, n) for p, h, n in todo}
        answer = []
        for path, _, num_parts in files:
            session = opened.get(path)
            if session is None:
                answer.append(FileToSend(path, skip=True))
                continue
            urls = [self._part_url(base_url, session, n) for n in range(1, num_parts + 1)]
            answer.append(FileToSend(path, False, session, urls))
        return answer

    @property
    def max_open_sessions(self) -> int:
        """Files one account may have uploading at once: two models' worth at the most files a model has."""
        return 2 * self.settings.max_archive_members

    def _check_size(self, size: int, what: str) -> None:
        if size > self.settings.max_artifact_bytes:
            raise InvalidRequest(
                f"{what} {size} bytes, past this server's limit of {self.settings.max_artifact_bytes} bytes per model"
            )

    def _part_url(self, base_url: str, session: UploadSession, number: int) -> str:
        direct = self.parts.direct
        if direct is not None and session.remote is not None:
            # Every part but the last is exactly PART_BYTES: signed in, so the store refuses any other size.
            length = etags.PART_BYTES if number < session.num_parts else None
            return direct.part_url(session.upload_id, session.remote, number, length, self.signer.ttl_s)
        query = self.signer.query("put", session.upload_id, number)
        return f"{self._base(base_url)}/v2/transfer/parts/{session.upload_id}/{number}?{query}"

    def _base(self, base_url: str) -> str:
        """Where clients reach this server: ``MODELPORT_PUBLIC_URL`` when set (behind a proxy), else the
        URL the request came to."""
        return (self.settings.public_url or base_url).rstrip("/")

    def _check_listing(self, paths: Sequence[str]) -> None:
        """Every path safe (relative, inside the model folder, no hidden parts), none twice, not too many."""
        if not paths:
            raise InvalidRequest("files must not be empty", param="files")
        if len(paths) > self.settings.max_archive_members:
            raise InvalidRequest(
                f"{len(paths)} files is more than this server takes per model ({self.settings.max_archive_members})",
                param="files",
            )
        for path in paths:
            check_path(path)
        if len(set(paths)) != len(paths):
            raise InvalidRequest("a path is listed twice", param="files")

    def _stored_etags(self, who: Principal, wanted: Sequence[str]) -> dict[str, RevisionFile]:
        """The account's stored files with these ETags, in ready revisions (whose blobs are kept)."""
        with self.db.read() as s:
            rows = s.scalars(
                select(RevisionFile)
                .join(ModelRevision, ModelRevision.id == RevisionFile.revision_id)
                .join(Model, Model.id == ModelRevision.model_id)
                .where(
                    Model.account_id == who.account_id,
                    ModelRevision.status == RevisionStatus.READY,
                    RevisionFile.etag.in_(list(wanted)),
                )
            )
            return {f.etag: f for f in rows if f.etag}

    async def receive_part(
        self, upload_id: str, number: int, expires: int, signature: str, body: AsyncIterator[bytes]
    ) -> str:
        """One part by its signed URL; returns its MD5, the ETag the client echoes at completion."""
        session = await run_sync(self._session_for_part, upload_id, number, expires, signature)
        return await self.parts.write_part(session, number, body)

    def _session_for_part(self, upload_id: str, number: int, expires: int, signature: str) -> UploadSession:
        self.signer.check(("put", upload_id, number), expires, signature)
        return self.parts.session(upload_id)

    def complete_upload(
        self, who: Principal, ref: str, uploaded: Sequence[Uploaded], skipped: Sequence[tuple[str, str]]
    ) -> str:
        """``uploaded``: (path, ETag, upload id, [(part number, part ETag)]); ``skipped``: (path, ETag).
        Returns the revision the files make: a new one, pending until its job has checked it, or the
        head itself when every file is the head's (an upload of what is already there changes nothing).
        Completing the same sessions again (a client's retry) answers the revision the first time made."""
        model = self.catalog.get_model(who, revisions.Ref.parse(ref).model, created=True)
        self._check_listing([p for p, *_ in uploaded] + [p for p, _ in skipped])
        sessions = [self._own_session(who, model, path, upload_id) for path, _, upload_id, _ in uploaded]
        made = {self.parts.completed(s.upload_id) for s in sessions}
        if sessions and len(made) == 1 and None not in made:
            return str(made.pop())
        planned = []
        for session, (path, etag, upload_id, parts) in zip(sessions, uploaded, strict=True):
            size, md5s = self.parts.verify(session, parts, etag)
            planned.append(PlannedFile(path, normalize_etag(etag), upload_id=upload_id, size=size, md5s=md5s))
        stored = self._stored_etags(who, [normalize_etag(etag) for _, etag in skipped])
        for path, etag in skipped:
            row = stored.get(normalize_etag(etag))
            if row is None:
                raise InvalidRequest(f"{path} was marked skipUpload, but no stored file has hash {etag}")
            planned.append(PlannedFile(path, normalize_etag(etag), sha256=row.sha256, size=row.size))
        total = sum(f.size or 0 for f in planned)
        self._check_size(total, "these files hold")
        with self.db.read() as s:
            quotas.check_storage(s, self.settings, who.account_id, total)
        same = self._head_if_same(model, planned)
        if same is not None:
            return same
        plan_id = self.parts.write_plan(planned)
        spec = SourceSpec(SourceKind.PARTS, plan_id, f"direct upload of {len(planned)} files")
        revision = self.catalog.submit_revision(who, model.id, spec).revision_id
        self.parts.mark_completed([s.upload_id for s in sessions], revision)
        return revision

    def _own_session(self, who: Principal, model: Model, path: str, upload_id: str) -> UploadSession:
        session = self.parts.session(upload_id)
        if session.account_id != who.account_id or session.model_id != model.id or session.path != path:
            raise NotFound(f"upload {upload_id!r} not found for {path}", param="uploadId")
        return session

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
        """The revision's files with their ETags. Ingest computes them; files stored before it did get
        theirs from housekeeping (``backfill_etags``), or here when they are small, so a request never
        reads much. Until then a file's hash is "" (a client then cannot skip it, and downloads it)."""
        if revision.status != RevisionStatus.READY:
            return []
        with self.db.read() as s:
            rows = revisions.files(s, revision.id)
        if sum(f.size for f in rows if not f.etag) <= INLINE_ETAG_BYTES:
            self._fill_etags([f for f in rows if not f.etag])
        return [FileToFetch(f.path, f.etag or "", f.size, f.sha256, _ranges(f.size)) for f in rows]

    def backfill_etags(self, budget_bytes: int = 4 * 2**30) -> int:
        """Compute the ETags of stored files that have none, up to about ``budget_bytes`` read; returns
        how many (housekeeping calls it on each pass)."""
        with self.db.read() as s:
            rows = list(s.scalars(select(RevisionFile).where(RevisionFile.etag.is_(None)).limit(1000)))
        chosen, read = [], 0
        for f in rows:
            if read and read + f.size > budget_bytes:
                break
            chosen.append(f)
            read += f.size
        return self._fill_etags(chosen)

    def _fill_etags(self, rows: Sequence[RevisionFile]) -> int:
        computed: dict[str, str] = {}
        for f in rows:
            if f.sha256 not in computed:
                with self.blobs.open(f.sha256) as stream:
                    computed[f.sha256] = etags.of_stream(stream)
            f.etag = computed[f.sha256]
        if computed:
            with self.db.session() as s:
                for sha256, etag in computed.items():
                    s.execute(update(RevisionFile).where(RevisionFile.sha256 == sha256).values(etag=etag))
        return len(rows)

    def download_url(self, base: str, revision_id: str, f: FileToFetch) -> str:
        """The signed URL of one file of a revision (``GET``, with a ``Range`` per part): the store's own
        presigned URL where it has one, else this server's."""
        if self.parts.direct is not None:
            return self.parts.direct.blob_url(f.sha256, self.signer.ttl_s)
        query = self.signer.query("get", revision_id, f.path)
        return f"{self._base(base)}/v2/transfer/files/{revision_id}/{quote(f.path)}?{query}"

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
