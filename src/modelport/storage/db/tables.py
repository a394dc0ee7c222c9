"""The relational schema. Changes here need a migration in ``migrations/versions``."""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from modelport.manifest import Manifest
from modelport.storage.db.types import ManifestJSON, UTCDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


def model_name_key(name: str) -> str:
    """The form under which two model names are one name: NFKC, case folded, NFC (``alice/MyModel`` and
    ``alice/mymodel`` share a key). Unique per row, so the database refuses a second spelling even when
    two submissions race."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKC", name).casefold())


def _name_key_of_row(context: Any) -> str:
    return model_name_key(context.get_current_parameters()["name"])


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}  # aware UTC on every database


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Administrators manage API keys of every account (``/api/v1/keys``); the first account is one.
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    # sha256 of the whole key: keys carry 256 random bits, so a slow hash buys nothing.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hint: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100), default="", server_default="")  # what people call it
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    # Written at most once a minute per key (``AccountService.authenticate``): a date people read, not a log.
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)


class Model(Base):
    """A model or adapter: a name with an ordered list of immutable revisions (``ModelRevision``).

    Rows in status ``uploading`` only reserve the name (its first upload is running); no API shows them.
    ``created`` rows (made by Together's v2 ``POST …/models``) have no ready revision yet. ``revision_id``
    is the head, the newest ready revision, which serves unless a request or an endpoint pins another;
    ``manifest``, ``type`` and ``total_bytes`` are copied from it in the transaction that moves the head,
    so lists and the serving path read one row.
    """

    __tablename__ = "models"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Filled from ``name`` on insert (a model's name never changes). Nullable in the schema only because
    # SQLite cannot add a NOT NULL column without rebuilding ``models`` (migration 0005); every row has one.
    name_key: Mapped[str] = mapped_column(String(200), nullable=True, unique=True, index=True, default=_name_key_of_row)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    type: Mapped[str | None] = mapped_column(String(32), default=None)
    description: Mapped[str | None] = mapped_column(Text, default=None)
    base_model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), default=None)
    source_kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(Text)
    manifest: Mapped[Manifest | None] = mapped_column(ManifestJSON, default=None)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    # The head revision; no foreign key, as revisions point at their model (a cycle SQLite cannot drop).
    revision_id: Mapped[str | None] = mapped_column(String(64), default=None)
    # The highest revision number ever given: numbers are never reused, so ``name@3`` always means one file set.
    last_revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRevision(Base):
    """One immutable file set of a model, numbered from 1 in the order revisions were submitted.

    ``status``: ``pending`` while its job runs, ``ready`` once validated and admitted (it can serve),
    ``failed`` with every problem the checks found in ``problems`` (it holds no files).
    """

    __tablename__ = "model_revisions"
    __table_args__ = (UniqueConstraint("model_id", "number", name="uq_model_revisions_number"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    manifest: Mapped[Manifest | None] = mapped_column(ManifestJSON, default=None)
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    source_kind: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(Text)  # redacted, as shown (``SourceSpec.display``)
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    problems: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    # An adapter's revision runs on the base revision it was validated against, not on whatever is newest.
    base_revision_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    validated_at: Mapped[datetime | None] = mapped_column(default=None)


class RevisionFile(Base):
    """A file of a revision. Bytes live in the blob store under ``sha256``, shared by every revision
    (of any model) that holds the same bytes. ``etag`` is its S3 multipart ETag at Together's 20 MiB
    parts, what the v2 upload protocol names files by (``ingest/etags.py``)."""

    __tablename__ = "revision_files"

    revision_id: Mapped[str] = mapped_column(ForeignKey("model_revisions.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    etag: Mapped[str | None] = mapped_column(String(48), default=None, index=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"), default=None)
    # Redacted arguments only: secrets live in job_secrets until the job ends.
    args: Mapped[dict[str, Any]] = mapped_column()
    progress: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class JobStatusUpdate(Base):
    __tablename__ = "job_status_updates"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    status: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[datetime] = mapped_column(default=utcnow)


class JobSecret(Base):
    """What a worker needs but nobody may read back: the full source URL and the HF token.

    Deleted as soon as the job ends, whatever the outcome.
    """

    __tablename__ = "job_secrets"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    hf_token: Mapped[str | None] = mapped_column(Text, default=None)


class Route(Base):
    """An endpoint's stable name (the ``model`` of a chat request) and how its traffic splits between its
    deployments (``Endpoint`` rows). Together's v2 calls this the endpoint (``ep_…``); a v1 endpoint is a
    route with one deployment, under the same name.

    ``traffic`` is ``[{"deployment_id", "weight"}]``: a deployment missing from it, or at weight 0,
    receives no live traffic. ``etag`` changes on every write, for the wire's optimistic concurrency.
    """

    __tablename__ = "routes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)  # "<account>/<name>"
    visibility: Mapped[str] = mapped_column(String(32), default="VISIBILITY_PRIVATE")
    traffic: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    etag: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Endpoint(Base):
    """A deployment: replicas of one model revision on reserved hardware, supervised by ``modelport serve``.
    (The table keeps its v1 name: a v1 endpoint is a route with one of these.)

    ``state`` is the wire state; ``desired`` is what the user asked for (STARTED or STOPPED), which the
    supervisor drives ``state`` towards. ``reservation`` records what the running replicas hold.
    ``replicas`` is the autoscaler's current count, between ``min_replicas`` and ``max_replicas``.
    """

    __tablename__ = "endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    # The revision the replicas serve, pinned when the endpoint is created: a new upload to the model
    # does not change what a running endpoint answers with.
    revision_id: Mapped[str | None] = mapped_column(String(64), default=None)
    hardware: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    desired: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    min_replicas: Mapped[int] = mapped_column(Integer, default=1)
    max_replicas: Mapped[int] = mapped_column(Integer, default=1)
    disable_speculative_decoding: Mapped[bool] = mapped_column(default=False)
    disable_prompt_cache: Mapped[bool] = mapped_column(default=False)
    inactive_timeout: Mapped[int | None] = mapped_column(Integer, default=None)  # minutes; None/0: never
    reservation: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    last_request_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    route_id: Mapped[str | None] = mapped_column(ForeignKey("routes.id"), index=True, default=None)
    label: Mapped[str] = mapped_column(String(200), default="")  # the deployment's name under its route
    traffic_mode: Mapped[str] = mapped_column(String(32), default="TRAFFIC_MODE_LIVE")
    max_concurrent: Mapped[int | None] = mapped_column(Integer, default=None)  # per replica; None: the engine's
    autoscaling: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # the wire's windows and metrics
    replicas: Mapped[int] = mapped_column(Integer, default=1)
    etag: Mapped[str] = mapped_column(String(32), default="")


class DeploymentAdapter(Base):
    """An adapter revision attached to a running deployment, served by its replicas' multi-LoRA engine."""

    __tablename__ = "deployment_adapters"
    __table_args__ = (UniqueConstraint("deployment_id", "adapter_model_id", name="uq_deployment_adapters"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), index=True)
    adapter_model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    revision_id: Mapped[str] = mapped_column(String(64))
    etag: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime] = mapped_column(default=utcnow)


class Rollout(Base):
    """Moving a route's traffic from one deployment to another, step by step, behind metric gates.

    ``spec`` is what was asked (strategy, steps, interval, gates, final replicas); ``steps`` the
    wire's per-step status with each gate's verdict; ``conditions`` why it stopped, if it did.
    """

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    route_id: Mapped[str] = mapped_column(ForeignKey("routes.id", ondelete="CASCADE"), index=True)
    source_id: Mapped[str | None] = mapped_column(String(64), default=None)
    target_id: Mapped[str] = mapped_column(String(64))
    strategy: Mapped[str] = mapped_column(String(48))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(48), index=True)
    current_step: Mapped[int] = mapped_column(Integer, default=0)
    traffic_percent: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    conditions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    pause_info: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    step_started_at: Mapped[datetime | None] = mapped_column(default=None)
    etag: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Experiment(Base):
    """An A/B experiment (``kind`` "ab": ``members`` with percents) or a shadow experiment ("shadow":
    ``source`` sampling and ``targets`` that receive mirrored copies) on a route."""

    __tablename__ = "experiments"
    __table_args__ = (UniqueConstraint("route_id", "kind", "name", name="uq_experiments_name"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    route_id: Mapped[str] = mapped_column(ForeignKey("routes.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(48), default="")
    members: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    etag: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EndpointEvent(Base):
    """Something that happened to a route or one of its deployments, for ``tg endpoints events``."""

    __tablename__ = "endpoint_events"
    __table_args__ = (Index("ix_endpoint_events_route_time", "route_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    route_id: Mapped[str] = mapped_column(ForeignKey("routes.id", ondelete="CASCADE"))
    deployment_id: Mapped[str | None] = mapped_column(String(64), default=None)
    type: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(16), default="LEVEL_INFO")
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Upload(Base):
    """An archive sent straight to the API (Nebius ``/v0/models/upload`` or the resumable API).

    Its bytes live under ``<data_dir>/uploads/<id>/``; ``status`` is ``receiving`` until every byte is
    there and verified, then ``complete``, when ``file-…`` can be named as a model source.
    """

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32), default="model")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    part_size: Mapped[int | None] = mapped_column(BigInteger, default=None)  # resumable uploads only
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)


class UsageDay(Base):
    """What one account asked of one model on one day (UTC): requests and tokens, as counted by the
    usage ledger (``serving/usage.py``), which adds its batched deltas with an upsert on the key.

    ``model`` is the served name (a model's, adapter's or endpoint's), not a foreign key: usage outlives
    the model. The primary key is the one unique key (account, model, day) the upsert conflicts on.
    """

    __tablename__ = "usage_days"

    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True, index=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Lease(Base):
    """A duty one server of several holds at a time (``endpoints/lease.py``): ``controller`` supervises
    endpoints and drives rollouts. ``holder`` renews it before ``expires_at``; once that has passed,
    another server may take it."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column()
