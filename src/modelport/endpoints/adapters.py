"""LoRA adapters attached to a deployment (Together v2's ``dad_…``), served by its replicas' multi-LoRA engine.

An attachment names an adapter of the caller and one of its revisions. That revision must have been
validated against the very base revision the deployment serves: an adapter's weights are deltas to one
set of base weights, and on others they answer nonsense without any error. A deployment holds at most
``MODELPORT_ENDPOINT_ADAPTER_SLOTS`` attachments; when full, a new one is refused unless the caller
passes ``force``, which evicts the least recently used (requests routed through an attachment stamp
its ``last_used_at``, ``routing.py``).

Replicas load an attached adapter on its first request (the engine keeps ``MODELPORT_MAX_LORAS`` of
them resident), so attaching restarts nothing; the load state shown is the deployment's replicas'.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelport.accounts.service import Principal
from modelport.catalog.service import Catalog
from modelport.endpoints.events import Events, Level
from modelport.endpoints.service import check_etag, new_etag, replica_count
from modelport.endpoints.states import RUNNING_STATES, EndpointState
from modelport.endpoints.supervisor import Supervisor
from modelport.errors import Conflict, InvalidRequest, NotFound
from modelport.ids import new_wire_id
from modelport.jobs.states import RevisionStatus
from modelport.manifest import ModelKind
from modelport.settings import Settings
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import DeploymentAdapter, Endpoint, Model, ModelRevision, utcnow

READY, LOADING, PENDING, FAILED = (f"ADAPTER_LOAD_STATE_{s}" for s in ("READY", "LOADING", "PENDING", "FAILED"))


@dataclass(frozen=True)
class LoadState:
    """Where an attachment stands on this host's replicas of its deployment (the wire's one cluster)."""

    state: str
    ready_pods: int
    total_pods: int


class DeploymentAdapters:
    def __init__(
        self, settings: Settings, db: Database, catalog: Catalog, supervisor: Supervisor, events: Events
    ) -> None:
        self.settings, self.db, self.catalog, self.supervisor, self.events = settings, db, catalog, supervisor, events
        self._lock = threading.Lock()  # the slot count is read-check-write

    def list(self, deployment: Endpoint) -> list[DeploymentAdapter]:
        with self.db.read() as s:
            query = select(DeploymentAdapter).where(DeploymentAdapter.deployment_id == deployment.id)
            return list(s.scalars(query.order_by(DeploymentAdapter.created_at, DeploymentAdapter.id)))

    def get(self, deployment: Endpoint, ref: str) -> DeploymentAdapter:
        """An attachment by its ``dad_`` id."""
        for a in self.list(deployment):
            if a.id == ref:
                return a
        raise NotFound(f"adapter {ref!r} is not attached to deployment {deployment.label}", param="adapterId")

    def load_state(self, deployment: Endpoint) -> LoadState:
        ready = self.supervisor.ready_replicas(deployment.id)
        total = replica_count(deployment) if deployment.state in RUNNING_STATES else 0
        if deployment.state == EndpointState.ERROR:
            return LoadState(FAILED, ready, total)
        if total == 0:  # stopped: it loads once the deployment runs again
            return LoadState(PENDING, ready, total)
        return LoadState(READY if ready > 0 else LOADING, ready, total)

    def attach(
        self,
        who: Principal,
        deployment: Endpoint,
        adapter_ref: str,
        revision_ref: str | None = None,
        force: bool = False,
    ) -> DeploymentAdapter:
        adapter, revision = self._checked(who, deployment, adapter_ref, revision_ref)
        now = utcnow()
        row = DeploymentAdapter(
            id=new_wire_id("dad"),
            deployment_id=deployment.id,
            adapter_model_id=adapter.id,
            revision_id=revision.id,
            etag=new_etag(),
            created_at=now,
            updated_at=now,
            last_used_at=now,
        )
        with self._lock, self.db.session() as s:
            held = _held(s, deployment.id)
            if any(a.adapter_model_id == adapter.id for a in held):
                raise Conflict(
                    f"{adapter.name} is already attached to deployment {deployment.label}: PATCH it to change its "
                    "revision",
                    param="adapterModelId",
                )
            evicted = self._make_room(s, deployment, held, force)
            s.add(row)
        if evicted is not None:
            self._evicted(deployment, evicted, adapter)
        self.events.record(
            deployment.route_id,
            "adapter.attached",
            f"adapter {adapter.name} (revision {revision.number}) attached to deployment {deployment.label}",
            deployment_id=deployment.id,
        )
        return self.get(deployment, row.id)

    def _make_room(
        self, s: Session, deployment: Endpoint, held: Sequence[DeploymentAdapter], force: bool
    ) -> DeploymentAdapter | None:
        """Nothing when a slot is free; else the least recently used attachment, deleted (with ``force``)."""
        slots = self.settings.endpoint_adapter_slots
        if len(held) < slots:
            return None
        if not force:
            raise Conflict(
                f"deployment {deployment.label} holds {len(held)} adapters, all of its {slots} slots "
                "(MODELPORT_ENDPOINT_ADAPTER_SLOTS): detach one, or attach with force to evict the least "
                "recently used",
                param="adapterModelId",
            )
        oldest = min(held, key=lambda a: (a.last_used_at, a.created_at, a.id))
        s.delete(oldest)
        s.flush()  # before the insert: the slot it frees is the one the new attachment takes
        return oldest

    def _evicted(self, deployment: Endpoint, evicted: DeploymentAdapter, by: Model) -> None:
        name = self._name(evicted.adapter_model_id)
        self.events.record(
            deployment.route_id,
            "adapter.evicted",
            f"adapter {name} detached from deployment {deployment.label} (least recently used, last at "
            f"{evicted.last_used_at:%Y-%m-%d %H:%M:%S}) to make room for {by.name}",
            level=Level.WARN,
            deployment_id=deployment.id,
        )

    def update(
        self, who: Principal, deployment: Endpoint, ref: str, revision_ref: str, etag: str | None
    ) -> DeploymentAdapter:
        """Serve another revision of the attached adapter (checked against the base as on attach)."""
        if not etag:
            raise InvalidRequest("etag is required: read the adapter and send its etag", param="etag")
        current = self.get(deployment, ref)
        adapter, revision = self._checked(who, deployment, current.adapter_model_id, revision_ref)
        with self._lock, self.db.session() as s:
            row = s.get(DeploymentAdapter, current.id)
            if row is None:
                raise NotFound(f"adapter {ref!r} is not attached to deployment {deployment.label}", param="adapterId")
            check_etag(etag, row.etag, f"adapter {adapter.name} on deployment {deployment.label}")
            row.revision_id, row.etag, row.updated_at = revision.id, new_etag(), utcnow()
        self.events.record(
            deployment.route_id,
            "adapter.updated",
            f"adapter {adapter.name} on deployment {deployment.label} now serves revision {revision.number}",
            deployment_id=deployment.id,
        )
        return self.get(deployment, current.id)

    def detach(self, deployment: Endpoint, ref: str, etag: str | None) -> None:
        current = self.get(deployment, ref)
        with self._lock, self.db.session() as s:
            row = s.get(DeploymentAdapter, current.id)
            if row is None:
                return
            check_etag(etag, row.etag, f"adapter {current.id} on deployment {deployment.label}")
            s.delete(row)
        self.events.record(
            deployment.route_id,
            "adapter.detached",
            f"adapter {self._name(current.adapter_model_id)} detached from deployment {deployment.label}",
            deployment_id=deployment.id,
        )

    # --- checks ---------------------------------------------------------------------------------
    def _checked(
        self, who: Principal, deployment: Endpoint, adapter_ref: str, revision_ref: str | None
    ) -> tuple[Model, ModelRevision]:
        """The caller's adapter and its revision (default: its head), if that runs on what the deployment serves."""
        adapter = self.catalog.get_model(who, adapter_ref)
        if adapter.kind != ModelKind.ADAPTER:
            raise InvalidRequest(
                f"{adapter.name} is not an adapter: deploy it as a deployment of its own", param="adapterModelId"
            )
        if adapter.base_model_id != deployment.model_id:
            raise InvalidRequest(
                f"{adapter.name} is an adapter of {self._name(adapter.base_model_id)}, but deployment "
                f"{deployment.label} serves {self._name(deployment.model_id)}",
                param="adapterModelId",
            )
        revision = self.catalog.revision(who, adapter.id, revision_ref or adapter.revision_id or "")
        if revision.status != RevisionStatus.READY:
            raise InvalidRequest(
                f"revision {revision.number} of {adapter.name} is {revision.status}: it cannot serve",
                param="adapterRevisionId",
            )
        if revision.base_revision_id != deployment.revision_id:
            raise InvalidRequest(
                f"revision {revision.id} of {adapter.name} was validated against base revision "
                f"{revision.base_revision_id}, but deployment {deployment.label} serves revision "
                f"{deployment.revision_id}: attach a revision of the adapter made for that base revision, or "
                "deploy the base revision it was made for",
                param="adapterRevisionId",
            )
        return adapter, revision

    def _name(self, model_id: str | None) -> str:
        if model_id is None:
            return "no model"
        with self.db.read() as s:
            return s.scalar(select(Model.name).where(Model.id == model_id)) or model_id


def _held(s: Session, deployment_id: str) -> list[DeploymentAdapter]:
    return list(s.scalars(select(DeploymentAdapter).where(DeploymentAdapter.deployment_id == deployment_id)))
