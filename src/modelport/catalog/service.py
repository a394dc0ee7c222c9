"""Models, adapters and their upload jobs, always seen through one account.

Another account's resources answer exactly like missing ones (``NotFound``), so ids reveal nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelport import revisions
from modelport.accounts import quotas
from modelport.accounts.service import Principal
from modelport.catalog import preflight as checks
from modelport.catalog.names import qualify
from modelport.catalog.preflight import Preflight
from modelport.errors import BaseModelNotFound, Conflict, InvalidRequest, InvalidSource, NotFound
from modelport.ids import WIRE_MODEL_PREFIX, model_id_of_wire, new_id
from modelport.ingest import peek
from modelport.ingest.sources import SourceKind, SourceSpec, parse_source
from modelport.ingest.uploads import archive_path
from modelport.jobs.states import JobStatus, JobType, ModelStatus, RevisionStatus
from modelport.jobs.store import add_update
from modelport.manifest import ModelKind
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import (
    Account,
    DeploymentAdapter,
    Endpoint,
    Job,
    JobSecret,
    JobStatusUpdate,
    Model,
    ModelRevision,
    RevisionFile,
    Upload,
    model_name_key,
)
from modelport.tool_formats import FORMATS


@dataclass(frozen=True)
class UploadRequest:
    model_name: str
    model_source: str
    model_type: str = "model"
    hf_token: str | None = None
    description: str | None = None
    base_model: str | None = None
    lora_model: str | None = None
    tool_call_parser: str | None = None  # how the model writes tool calls; None: read off its chat template


@dataclass(frozen=True)
class Submitted:
    job_id: str
    model_id: str
    model_name: str
    source: SourceSpec
    revision_id: str


@dataclass(frozen=True)
class JobView:
    job: Job
    updates: list[JobStatusUpdate]


class Catalog:
    def __init__(self, settings: Settings, db: Database, on_submit: Callable[[], None] = lambda: None) -> None:
        self.settings, self.db = settings, db
        self.on_submit = on_submit  # wakes in-process workers; others find the job at their next poll

    def preflight(
        self,
        who: Principal,
        model_name: str,
        model_type: str = "model",
        base_model: str | None = None,
        model_source: str | None = None,
        files: Sequence[str] | None = None,
        lora_model: str | None = None,
    ) -> Preflight:
        """Everything about an upload that can be known before its bytes move and before a job exists.

        Checks run in a fixed order (type, source, name, base, files) and the first problem raises.
        ``files``: the names in the folder or archive about to be sent, relative to its top.
        """
        checks.check_type(model_type, base_model, lora_model)
        source = parse_source(model_source, self.settings) if model_source is not None else None
        if source is not None and source.kind == SourceKind.UPLOAD:
            self._check_upload(who, source.url)
        name = qualify(who.account_name, model_name)
        with self.db.read() as s:
            self._check_name_free(s, name)
            base = self._resolve_base(s, who, base_model) if base_model else None
        detected = checks.check_files(files, model_type) if files is not None else None
        return Preflight(name, model_type, detected, base, source)

    def submit_upload(self, who: Principal, req: UploadRequest) -> Submitted:
        """A new model (or adapter) and the job that makes its first revision."""
        if req.tool_call_parser is not None and req.tool_call_parser not in FORMATS:
            raise InvalidRequest(f"tool_call_parser must be one of {', '.join(FORMATS)}", param="tool_call_parser")
        checked = self.preflight(
            who, req.model_name, req.model_type, req.base_model, req.model_source, lora_model=req.lora_model
        )
        name, source = checked.model_name, checked.source
        assert source is not None
        if source.kind == SourceKind.UPLOAD:
            self._check_archive_kind(source.url, req.model_type)
        model_id = new_id("model")
        try:
            with self.db.session() as s:
                quotas.lock_account(s, who.account_id)
                from_upload = source.url if source.kind == SourceKind.UPLOAD else None
                quotas.check_submission(s, self.settings, who.account_id, from_upload=from_upload)
                self._check_name_free(s, name)
                s.add(
                    Model(
                        id=model_id,
                        account_id=who.account_id,
                        name=name,
                        kind=req.model_type,
                        status=ModelStatus.UPLOADING,
                        description=req.description,
                        source_kind=source.kind,
                        source=source.display,
                    )
                )
                s.flush()
                job_id, revision_id = self._enqueue(s, who, model_id, name, source, req, checked.base_model)
        except IntegrityError:
            # Two uploads raced for one name: the unique index let exactly one commit.
            raise checks.name_taken(name, still_uploading=True) from None
        self.on_submit()
        return Submitted(job_id, model_id, name, source, revision_id)

    def submit_revision(
        self, who: Principal, ref: str, model_source: str | SourceSpec, hf_token: str | None = None
    ) -> Submitted:
        """A job that makes a new revision of an existing model from ``model_source`` (as a user gives
        it, or a source another service made: a direct upload's parts); the model keeps serving its head
        until the new revision is ready, and keeps it if the new one fails."""
        model = self.get_model(who, ref, created=True)
        source = model_source if isinstance(model_source, SourceSpec) else parse_source(model_source, self.settings)
        if source.kind == SourceKind.UPLOAD:
            self._check_upload(who, source.url)
            self._check_archive_kind(source.url, model.kind)
        base = self.base_name(model) if model.kind == ModelKind.ADAPTER else None
        # A revision keeps the model's tool-call format (given at upload, or read then off its template).
        parser = model.manifest.tool_call_parser if model.manifest is not None else None
        req = UploadRequest(
            model.name, source.display, model.kind, hf_token, model.description, base, tool_call_parser=parser
        )
        try:
            with self.db.session() as s:
                quotas.lock_account(s, who.account_id)
                from_upload = source.url if source.kind == SourceKind.UPLOAD else None
                quotas.check_submission(s, self.settings, who.account_id, from_upload=from_upload, new_model=False)
                job_id, revision_id = self._enqueue(s, who, model.id, model.name, source, req, base)
        except IntegrityError:
            raise Conflict(f"another revision of {model.name} was submitted at the same moment; try again") from None
        self.on_submit()
        return Submitted(job_id, model.id, model.name, source, revision_id)

    def _enqueue(
        self,
        s: Session,
        who: Principal,
        model_id: str,
        name: str,
        source: SourceSpec,
        req: UploadRequest,
        base_model: str | None,
    ) -> tuple[str, str]:
        """Add the pending revision, its job and the job's secrets; returns ``(job id, revision id)``."""
        job_id, revision_id = new_id("job"), new_id("rev")
        number = revisions.next_number(s, model_id)
        s.add(
            ModelRevision(
                id=revision_id,
                model_id=model_id,
                number=number,
                status=RevisionStatus.PENDING,
                source_kind=source.kind,
                source=source.display,
                job_id=job_id,
            )
        )
        args = {
            "modelName": name,
            "modelSource": source.display,
            "modelType": req.model_type,
            "description": req.description or "",
            # The resolved full name, which the job looks up again (``find_base``) when it runs.
            "baseModel": base_model,
            "loraModel": req.lora_model,
            "toolCallParser": req.tool_call_parser,
            "revisionId": revision_id,
            "revision": number,
            "sourceKind": source.kind,
        }
        s.add(
            Job(
                id=job_id,
                account_id=who.account_id,
                type=JobType.for_upload(req.model_type),
                status=JobStatus.QUEUED,
                model_id=model_id,
                args=args,
            )
        )
        s.flush()
        s.add(JobSecret(job_id=job_id, source=source.url, hf_token=req.hf_token or None))
        what = f"{name}" if number == 1 else f"revision {number} of {name}"
        add_update(s, job_id, JobStatus.QUEUED, f"job created for {what} from {source.display}")
        return job_id, revision_id

    def create_model(
        self, who: Principal, model_name: str, model_type: str, base_model: str | None, description: str | None
    ) -> Model:
        """A model with no revision yet (Together v2 ``POST …/models``): it holds its name and is listed,
        and serves once an upload to it makes a ready revision."""
        checked = self.preflight(who, model_name, model_type, base_model)
        model = Model(
            id=new_id("model"),
            account_id=who.account_id,
            name=checked.model_name,
            kind=model_type,
            status=ModelStatus.CREATED,
            description=description,
            source_kind="none",
            source="",
        )
        try:
            with self.db.session() as s:
                quotas.lock_account(s, who.account_id)
                quotas.check_submission(s, self.settings, who.account_id)
                self._check_name_free(s, checked.model_name)
                if checked.base_model:
                    base = _find(s, who, checked.base_model, (ModelStatus.READY,))
                    model.base_model_id = base.id if base else None
                s.add(model)
        except IntegrityError:
            raise checks.name_taken(checked.model_name, still_uploading=False) from None
        return self.get_model(who, model.id, created=True)

    def update_model(self, who: Principal, ref: str, *, description: str | None) -> Model:
        model = self.get_model(who, ref, created=True)
        with self.db.session() as s:
            row = s.get(Model, model.id)
            if row is not None:
                row.description = description
        return self.get_model(who, model.id, created=True)

    # --- revisions ---------------------------------------------------------------------------------
    def revisions(self, who: Principal, ref: str) -> list[ModelRevision]:
        model = self.get_model(who, ref, created=True)
        with self.db.read() as s:
            return revisions.listed(s, model.id)

    def revision(self, who: Principal, ref: str, revision: str) -> ModelRevision:
        model = self.get_model(who, ref, created=True)
        with self.db.read() as s:
            return revisions.require(s, model, revision)

    def revision_files(self, revision: ModelRevision) -> list[RevisionFile]:
        with self.db.read() as s:
            return revisions.files(s, revision.id)

    def delete_revision(self, who: Principal, ref: str, revision: str) -> ModelRevision:
        """Refused while an endpoint pins it, while adapters run on it, while it is being made, and for a
        model's last ready revision (delete the model instead). Deleting the head makes the previous ready
        one the head."""
        model = self.get_model(who, ref, created=True)
        with self.db.session() as s:
            revisions.lock(s, model.id)  # against a racing delete or registration of the same model
            row = revisions.require(s, model, revision)
            if row.status == RevisionStatus.PENDING:
                raise Conflict(f"revision {row.number} of {model.name} is still being made ({row.job_id})")
            pinned = list(s.scalars(select(Endpoint.name).where(Endpoint.revision_id == row.id)))
            attached = select(Endpoint.name).join(DeploymentAdapter, DeploymentAdapter.deployment_id == Endpoint.id)
            pinned += list(s.scalars(attached.where(DeploymentAdapter.revision_id == row.id)))
            if pinned:
                raise Conflict(
                    f"revision {row.number} of {model.name} is pinned by endpoint {', '.join(pinned)}; "
                    "delete those endpoints first",
                    param="revision",
                )
            adapters = list(
                s.scalars(
                    select(Model.name)
                    .join(ModelRevision, ModelRevision.model_id == Model.id)
                    .where(ModelRevision.base_revision_id == row.id)
                    .distinct()
                )
            )
            if adapters:
                raise Conflict(
                    f"revision {row.number} of {model.name} is the base of adapters {', '.join(adapters)}; "
                    "delete those adapters (or their revisions on it) first",
                    param="revision",
                )
            others = [r for r in revisions.listed(s, model.id) if r.id != row.id and r.status == RevisionStatus.READY]
            if row.status == RevisionStatus.READY and not others:
                raise Conflict(
                    f"revision {row.number} is the only ready revision of {model.name}; delete the model instead",
                    param="revision",
                )
            s.delete(row)
            s.flush()
            held = s.get(Model, model.id)
            if held is not None:
                revisions.move_head(s, held)
        # The blobs go with the next cleanup pass, once no revision references them.
        return row

    def _check_upload(self, who: Principal, upload_id: str) -> None:
        with self.db.read() as s:
            upload = s.get(Upload, upload_id)
        if upload is None or upload.account_id != who.account_id:
            raise InvalidSource(f"{upload_id} is not one of your uploads", param="model_source")
        if upload.status != "complete":
            raise InvalidSource(f"{upload_id} has not finished uploading", param="model_source")

    def _check_archive_kind(self, upload_id: str, model_type: str) -> None:
        """An uploaded tar or zip says what it holds in its headers: adapter files sent as a model (or the
        reverse) are refused here rather than after a job has unpacked them. Other archives: the job."""
        names = peek.member_names(archive_path(self.settings, upload_id), self.settings.max_archive_members)
        if names is not None:
            checks.check_files(names, model_type, param="model_source")

    @staticmethod
    def _check_name_free(s: Session, name: str) -> None:
        """A name is held from submission on: a model still uploading holds it as a ready one does. Names
        are one name under case folding and normalisation (``model_name_key``): the holder's spelling is named."""
        held = s.execute(select(Model.name, Model.status).where(Model.name_key == model_name_key(name))).first()
        if held is not None:
            raise checks.name_taken(held.name, still_uploading=held.status == ModelStatus.UPLOADING)

    @staticmethod
    def _resolve_base(s: Session, who: Principal, ref: str) -> str:
        """The base's full name, found by ``get_model``'s rule; it must be a ready full model."""
        model = _find(s, who, ref, (ModelStatus.READY,))
        if model is None:
            pending = s.scalar(
                select(Model.name).where(Model.account_id == who.account_id, Model.name.in_(_ref_names(who, ref)))
            )
            bases = s.scalars(
                select(Model.name).where(
                    Model.account_id == who.account_id, Model.status == ModelStatus.READY, Model.kind == ModelKind.MODEL
                )
            )
            raise checks.base_not_found(ref, who.account_name, list(bases), pending)
        if model.kind != ModelKind.MODEL:
            base = s.scalar(select(Model.name).where(Model.id == model.base_model_id))
            raise BaseModelNotFound(
                f"{model.name} is an adapter, and an adapter's base_model must be a full model"
                + (f"; its own base is {base}" if base else ""),
                param="base_model",
            )
        return model.name

    def get_job(self, who: Principal, job_id: str) -> JobView:
        with self.db.read() as s:
            job = s.get(Job, job_id)
            if job is None or job.account_id != who.account_id:
                raise NotFound(f"job {job_id!r} not found", param="job_id")
            updates = list(
                s.scalars(select(JobStatusUpdate).where(JobStatusUpdate.job_id == job_id).order_by(JobStatusUpdate.id))
            )
        return JobView(job, updates)

    def list_jobs(self, who: Principal, status: str | None = None, limit: int = 100) -> list[JobView]:
        query = select(Job).where(Job.account_id == who.account_id).order_by(Job.created_at.desc()).limit(limit)
        if status:
            query = query.where(Job.status == status)
        with self.db.read() as s:
            jobs = list(s.scalars(query))
            updates: dict[str, list[JobStatusUpdate]] = {j.id: [] for j in jobs}
            for u in s.scalars(
                select(JobStatusUpdate).where(JobStatusUpdate.job_id.in_(list(updates))).order_by(JobStatusUpdate.id)
            ):
                updates[u.job_id].append(u)
        return [JobView(j, updates[j.id]) for j in jobs]

    def list_models(self, who: Principal, *, created: bool = False) -> list[Model]:
        """The caller's models that serve; ``created=True`` adds those with no ready revision yet."""
        statuses = (ModelStatus.READY, ModelStatus.CREATED) if created else (ModelStatus.READY,)
        with self.db.read() as s:
            return list(
                s.scalars(
                    select(Model)
                    .where(Model.account_id == who.account_id, Model.status.in_(statuses))
                    .order_by(Model.created_at)
                )
            )

    def get_model(self, who: Principal, ref: str, *, created: bool = False) -> Model:
        """``ref`` is a model id, a full name, or a name within the caller's namespace, optionally pinned
        to a revision (``name@3``, ``name@rev-…``; see ``revisions``). ``created=True`` also finds a
        model that has no ready revision yet (to upload to it, list or delete it)."""
        parsed = revisions.Ref.parse(ref)
        statuses = (ModelStatus.READY, ModelStatus.CREATED) if created else (ModelStatus.READY,)
        with self.db.read() as s:
            model = _find(s, who, parsed.model, statuses)
            if model is None:
                raise NotFound(f"model {parsed.model!r} not found", param="model")
            if parsed.revision is None:
                return model
            pinned = revisions.require(s, model, parsed.revision)
        if pinned.status != RevisionStatus.READY:
            raise NotFound(
                f"revision {pinned.number} of {model.name} is {pinned.status}: it cannot serve", param="model"
            )
        return revisions.at(model, pinned)

    def find_base(self, account_id: str, ref: str) -> Model | None:
        """The ready full model ``ref`` names in the account, by ``get_model``'s rule: for the ingest
        pipeline, which knows the job's account but not who submitted it."""
        with self.db.read() as s:
            account = s.get(Account, account_id)
            if account is None:
                return None
            who = Principal(account_id, account.name, key_id="")
            model = _find(s, who, ref, (ModelStatus.READY,))
        return model if model is not None and model.kind == ModelKind.MODEL else None

    def delete_model(self, who: Principal, ref: str) -> Model:
        """The model with all its revisions; ``name@3`` deletes only that revision (``delete_revision``)."""
        parsed = revisions.Ref.parse(ref)
        if parsed.revision is not None:
            self.delete_revision(who, parsed.model, parsed.revision)
            return self.get_model(who, parsed.model, created=True)
        model = self.get_model(who, ref, created=True)
        with self.db.session() as s:
            dependants = list(s.scalars(select(Model.name).where(Model.base_model_id == model.id)))
            if dependants:
                raise Conflict(
                    f"{model.name} is the base of {', '.join(dependants)}; delete those adapters first",
                    param="model",
                )
            endpoints = list(s.scalars(select(Endpoint.name).where(Endpoint.model_id == model.id)))
            attached = select(Endpoint.name).join(DeploymentAdapter, DeploymentAdapter.deployment_id == Endpoint.id)
            endpoints += list(s.scalars(attached.where(DeploymentAdapter.adapter_model_id == model.id)))
            if endpoints:
                raise Conflict(
                    f"{model.name} is deployed on {', '.join(endpoints)}; delete those endpoints first", param="model"
                )
            row = s.get(Model, model.id)
            if row is not None:
                s.delete(row)
        # The blobs go with the next cleanup pass (after its grace period), never while referenced.
        return model

    def serving_target(self, who: Principal, ref: str) -> tuple[Model, Model | None]:
        """``(model to load, adapter to apply or None)`` for ``ref``; an adapter's revision runs on the base
        revision it was validated against (a newer base revision does not change what it runs on)."""
        model = self.get_model(who, ref)
        if model.kind != ModelKind.ADAPTER:
            return model, None
        with self.db.read() as s:
            served = s.get(ModelRevision, model.revision_id) if model.revision_id else None
        base_revision = served.base_revision_id if served else None
        base = self.model_at(model.base_model_id, base_revision) if model.base_model_id else None
        if base is None or base.status != ModelStatus.READY:
            raise NotFound(f"the base model of adapter {model.name} is no longer available", param="model")
        return base, model

    def model_at(self, model_id: str, revision_id: str | None) -> Model | None:
        """A model as of one of its revisions (its head when ``revision_id`` is None), for parts that already
        hold the id and its account's permission: endpoints, their replicas, an adapter's base. None when
        either is gone (deletion refuses a revision anything pins, so that is a model deleted meanwhile)."""
        with self.db.read() as s:
            model = s.get(Model, model_id)
            pinned = s.get(ModelRevision, revision_id) if revision_id else None
        if model is None or revision_id is None:
            return model
        if pinned is None or pinned.model_id != model.id or pinned.status != RevisionStatus.READY:
            return None
        return revisions.at(model, pinned)

    def artifact_ids(self) -> set[str]:
        """Every revision's id, in any account and state: what the artifact cache may keep."""
        with self.db.read() as s:
            return set(s.scalars(select(ModelRevision.id)))

    def has_models(self) -> bool:
        with self.db.read() as s:
            return s.scalar(select(Model.id).where(Model.status == ModelStatus.READY).limit(1)) is not None

    def files(self, model: Model) -> list[RevisionFile]:
        """The files of the revision ``model`` stands for: its head, or the one a reference pinned."""
        with self.db.read() as s:
            return revisions.files(s, model.revision_id)

    def base_name(self, model: Model) -> str | None:
        if not model.base_model_id:
            return None
        with self.db.read() as s:
            return s.scalar(select(Model.name).where(Model.id == model.base_model_id))


def _ref_names(who: Principal, ref: str) -> list[str]:
    return [ref] if "/" in ref else [ref, f"{who.account_name}/{ref}"]


def _find(s: Session, who: Principal, ref: str, statuses: Sequence[str]) -> Model | None:
    """The one rule for naming a model: its id (or its v2 ``ml_`` form), its full name, or its name in
    the caller's namespace."""
    ids = [ref, model_id_of_wire(ref)] if ref.startswith(WIRE_MODEL_PREFIX) else [ref]
    return s.scalars(
        select(Model).where(
            Model.account_id == who.account_id,
            Model.status.in_(statuses),
            Model.id.in_(ids) | Model.name.in_(_ref_names(who, ref)),
        )
    ).first()
