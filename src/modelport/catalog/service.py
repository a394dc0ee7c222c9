"""Models, adapters and their upload jobs, always seen through one account.

Another account's resources answer exactly like missing ones (``NotFound``), so ids reveal nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from modelport.accounts import quotas
from modelport.accounts.service import Principal
from modelport.catalog.names import qualify
from modelport.errors import Conflict, InvalidRequest, InvalidSource, ModelNameTaken, NotFound
from modelport.ids import new_id
from modelport.ingest.pipeline import job_type
from modelport.ingest.sources import SourceKind, SourceSpec, parse_source
from modelport.jobs.states import JobStatus, ModelStatus
from modelport.jobs.store import add_update
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Job, JobSecret, JobStatusUpdate, Model, ModelFile, Upload


@dataclass(frozen=True)
class UploadRequest:
    model_name: str
    model_source: str
    model_type: str = "model"
    hf_token: str | None = None
    description: str | None = None
    base_model: str | None = None
    lora_model: str | None = None


@dataclass(frozen=True)
class Submitted:
    job_id: str
    model_id: str
    model_name: str
    source: SourceSpec


@dataclass(frozen=True)
class JobView:
    job: Job
    updates: list[JobStatusUpdate]


class Catalog:
    def __init__(self, settings: Settings, db: Database, on_submit: Callable[[], None] = lambda: None) -> None:
        self.settings, self.db = settings, db
        self.on_submit = on_submit  # wakes in-process workers; others find the job at their next poll

    def submit_upload(self, who: Principal, req: UploadRequest) -> Submitted:
        if req.model_type not in ("model", "adapter"):
            raise InvalidRequest("model_type must be 'model' or 'adapter'", param="model_type")
        name = qualify(who.account_name, req.model_name)
        source = parse_source(req.model_source, self.settings)
        if req.model_type == "model" and (req.base_model or req.lora_model):
            raise InvalidRequest("base_model and lora_model only apply to model_type 'adapter'", param="base_model")
        if source.kind == SourceKind.UPLOAD:
            self._check_upload(who, source.url)
        model_id, job_id = new_id("model"), new_id("job")
        args = {
            "modelName": name,
            "modelSource": source.display,
            "modelType": req.model_type,
            "description": req.description or "",
            "baseModel": req.base_model,
            "loraModel": req.lora_model,
        }
        try:
            with self.db.session() as s:
                quotas.lock_account(s, who.account_id)
                quotas.check_submission(s, self.settings, who.account_id)
                if s.scalar(select(Model.id).where(Model.name == name)):
                    raise ModelNameTaken(f"Model name already exists: {name}", param="model_name")
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
                s.add(
                    Job(
                        id=job_id,
                        account_id=who.account_id,
                        type=job_type(req.model_type),
                        status=JobStatus.QUEUED,
                        model_id=model_id,
                        args=args,
                    )
                )
                s.flush()
                s.add(JobSecret(job_id=job_id, source=source.url, hf_token=req.hf_token or None))
                add_update(s, job_id, JobStatus.QUEUED, f"job created for {name} from {source.display}")
        except IntegrityError:
            # Two uploads raced for one name: the unique index let exactly one commit.
            raise ModelNameTaken(f"Model name already exists: {name}", param="model_name") from None
        self.on_submit()
        return Submitted(job_id, model_id, name, source)

    def _check_upload(self, who: Principal, upload_id: str) -> None:
        with self.db.read() as s:
            upload = s.get(Upload, upload_id)
        if upload is None or upload.account_id != who.account_id:
            raise InvalidSource(f"{upload_id} is not one of your uploads", param="model_source")
        if upload.status != "complete":
            raise InvalidSource(f"{upload_id} has not finished uploading", param="model_source")

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

    def list_models(self, who: Principal) -> list[Model]:
        with self.db.read() as s:
            return list(
                s.scalars(
                    select(Model)
                    .where(Model.account_id == who.account_id, Model.status == ModelStatus.READY)
                    .order_by(Model.created_at)
                )
            )

    def get_model(self, who: Principal, ref: str) -> Model:
        """``ref`` is a model id, a full name, or a name within the caller's namespace."""
        names = [ref] if "/" in ref else [ref, f"{who.account_name}/{ref}"]
        with self.db.read() as s:
            model = s.scalars(
                select(Model).where(
                    Model.account_id == who.account_id,
                    Model.status == ModelStatus.READY,
                    (Model.id == ref) | Model.name.in_(names),
                )
            ).first()
        if model is None:
            raise NotFound(f"model {ref!r} not found", param="model")
        return model

    def delete_model(self, who: Principal, ref: str) -> Model:
        model = self.get_model(who, ref)
        with self.db.session() as s:
            dependants = list(s.scalars(select(Model.name).where(Model.base_model_id == model.id)))
            if dependants:
                raise Conflict(
                    f"{model.name} is the base of {', '.join(dependants)}; delete those adapters first",
                    param="model",
                )
            endpoints = list(s.scalars(select(Endpoint.name).where(Endpoint.model_id == model.id)))
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
        """``(model to load, adapter to apply or None)`` for ``ref``; an adapter runs on its base."""
        model = self.get_model(who, ref)
        if model.kind != "adapter":
            return model, None
        with self.db.read() as s:
            base = s.get(Model, model.base_model_id) if model.base_model_id else None
        if base is None or base.status != ModelStatus.READY:
            raise NotFound(f"the base model of adapter {model.name} is no longer available", param="model")
        return base, model

    def files(self, model: Model) -> list[ModelFile]:
        with self.db.read() as s:
            return list(s.scalars(select(ModelFile).where(ModelFile.model_id == model.id).order_by(ModelFile.path)))

    def base_name(self, model: Model) -> str | None:
        if not model.base_model_id:
            return None
        with self.db.read() as s:
            return s.scalar(select(Model.name).where(Model.id == model.base_model_id))
