"""Revisions: a model's immutable file sets, and which one serves.

A model names its head (``Model.revision_id``), the newest ready revision. A reference to a model may
pin another with ``@``: ``alice/chat@3`` (its number) or ``alice/chat@rev-…`` (its id); model names
cannot contain ``@``. The helpers here run inside the caller's session.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.errors import NotFound
from modelport.jobs.states import ModelStatus, RevisionStatus
from modelport.storage.db.tables import Model, ModelRevision, RevisionFile, utcnow


@dataclass(frozen=True)
class Ref:
    """What a model reference names: the model, and the revision it pins (None: the head)."""

    model: str
    revision: str | None = None

    @classmethod
    def parse(cls, ref: str) -> Ref:
        model, at, revision = ref.partition("@")
        return cls(model, revision) if at and revision else cls(model)


def lock(s: Session, model_id: str) -> Model | None:
    """The model's row, locked until the transaction ends: what moves its head or numbers its revisions
    takes it first, so two of them never interleave (a no-op lock on SQLite, which runs one writer)."""
    return s.get(Model, model_id, with_for_update=True)


def next_number(s: Session, model_id: str) -> int:
    """The number the model's next revision takes: one past the highest ever given, deleted ones
    included, so a number always names one file set."""
    model = lock(s, model_id)
    if model is None:
        raise NotFound("the model was deleted", param="model")
    model.last_revision = (model.last_revision or 0) + 1
    return model.last_revision


def find(s: Session, model: Model, ref: str) -> ModelRevision | None:
    """The model's revision by id or number."""
    query = select(ModelRevision).where(ModelRevision.model_id == model.id)
    if ref.isascii() and ref.isdigit():
        number = int(ref)
        return s.scalars(query.where(ModelRevision.number == number)).first() if number < 2**31 else None
    return s.scalars(query.where(ModelRevision.id == ref)).first()


def require(s: Session, model: Model, ref: str) -> ModelRevision:
    revision = find(s, model, ref)
    if revision is None:
        raise NotFound(f"{model.name} has no revision {ref!r}", param="revision")
    return revision


def listed(s: Session, model_id: str) -> list[ModelRevision]:
    return list(
        s.scalars(select(ModelRevision).where(ModelRevision.model_id == model_id).order_by(ModelRevision.number))
    )


def files(s: Session, revision_id: str | None) -> list[RevisionFile]:
    if revision_id is None:
        return []
    return list(
        s.scalars(select(RevisionFile).where(RevisionFile.revision_id == revision_id).order_by(RevisionFile.path))
    )


def move_head(s: Session, model: Model) -> None:
    """Point the model at its newest ready revision and copy what lists and serving read from it.

    A model left with no ready revision goes back to ``created`` (v2) and serves nothing."""
    head = s.scalars(
        select(ModelRevision)
        .where(ModelRevision.model_id == model.id, ModelRevision.status == RevisionStatus.READY)
        .order_by(ModelRevision.number.desc())
    ).first()
    model.revision_id = head.id if head else None
    if head is None:
        model.status = ModelStatus.CREATED
        return
    assert head.manifest is not None  # a ready revision always has one (``Pipeline._register``)
    model.status, model.manifest = ModelStatus.READY, head.manifest
    model.type, model.total_bytes = head.manifest.type, head.total_bytes


def at(model: Model, revision: ModelRevision) -> Model:
    """The model as of ``revision``: a detached copy that serving loads like the model itself (the
    artifact cache and the engines key what they load by ``revision_id``)."""
    if revision.id == model.revision_id:
        return model
    view = Model(**{c: getattr(model, c) for c in Model.__table__.columns.keys()})  # noqa: SIM118 (a ColumnCollection)
    view.revision_id, view.manifest, view.total_bytes = revision.id, revision.manifest, revision.total_bytes
    view.type = revision.manifest.type if revision.manifest else model.type
    return view


def mark_ready(revision: ModelRevision, total_bytes: int) -> None:
    revision.status, revision.total_bytes, revision.validated_at = RevisionStatus.READY, total_bytes, utcnow()
