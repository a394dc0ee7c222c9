"""Endpoints as the API sees them: create, list, get, update (start/stop/scale/rename), delete.

Hardware is reserved here, when an endpoint is asked to run, inside one lock and one transaction, so
two requests can never both take the last GPU or gigabyte, nor one account more than its share of
the host (``MODELPORT_QUOTA_ENDPOINT_SHARE``, see ``hardware.py``). Refusals name the caller's own
endpoints only: what other accounts run is theirs to know ("held by other accounts' endpoints").
The supervisor (``supervisor.py``) then drives each endpoint's replicas towards its ``desired`` state
and releases the reservation on stop.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from modelport.accounts.service import Principal
from modelport.catalog.service import Catalog
from modelport.endpoints.hardware import (
    GIB,
    HardwareConfig,
    Inventory,
    config_units,
    estimate_bytes,
    reservation_units,
)
from modelport.endpoints.states import RUNNING_STATES, EndpointState, initialize, move, on_request
from modelport.errors import Conflict, HardwareUnavailable, InvalidRequest, NotFound, QuotaExceeded
from modelport.ids import new_id, new_wire_id
from modelport.manifest import Manifest, ModelKind, context_length_of
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore
from modelport.storage.db.engine import Database
from modelport.storage.db.tables import Endpoint, Model, Route, utcnow

_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1}


@dataclass(frozen=True)
class EndpointSpec:
    model: str
    hardware: str
    min_replicas: int = 1
    max_replicas: int = 1
    display_name: str | None = None
    disable_speculative_decoding: bool = False
    disable_prompt_cache: bool = False
    state: str = EndpointState.STARTED
    inactive_timeout: int | None = None
    # A v2 deployment names its route (endpoint) and its name there; a v1 endpoint gets a route of its own.
    route_id: str | None = None
    label: str | None = None
    traffic_mode: str = "TRAFFIC_MODE_LIVE"
    max_concurrent: int | None = None
    autoscaling: dict[str, Any] | None = None


@dataclass(frozen=True)
class Availability:
    config: HardwareConfig
    status: str | None  # available | insufficient | unavailable; None when no model was named


class EndpointService:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        catalog: Catalog,
        blobs: BlobStore,
        inventory: Callable[[], Inventory],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings, self.db, self.catalog, self.blobs = settings, db, catalog, blobs
        self._inventory = inventory  # the placement backend's: this host's, or a Ray cluster's as it is now
        self._lock = threading.Lock()  # reservations are decided one at a time
        self.on_change = on_change  # wakes the supervisor
        # What must let go of a deployment before it is deleted, by any API: experiments, rollouts.
        self.forgetters: list[Callable[[Route, str], None]] = []

    @property
    def inventory(self) -> Inventory:
        return self._inventory()

    # --- hardware -------------------------------------------------------------------------------
    def configs(self) -> list[HardwareConfig]:
        return self.inventory.configs(self.settings.hardware_prices)

    def hardware(self, who: Principal, model_ref: str | None) -> list[Availability]:
        if model_ref is None:
            return [Availability(c, None) for c in self.configs()]
        need = self._need(self.catalog.get_model(who, model_ref))
        with self.db.read() as s:
            running = _running(s)
        free = self._free(running)
        room = self._share_cap() - sum(reservation_units(e.reservation) for e in _own(running, who.account_id))
        return [Availability(c, self._status(c, need, free, room)) for c in self.configs()]

    def _status(self, config: HardwareConfig, need: int, free: dict[str, Any], room: int) -> str:
        """``room``: what the caller's share still allows, in the host's units."""
        if need > config.memory_bytes:
            return "insufficient"
        fits = config_units(config) <= room and self._take(config, 1, free) is not None
        return "available" if fits else "unavailable"

    def _need(self, model: Model) -> int:
        config_file = next((f for f in self.catalog.files(model) if f.path == "config.json"), None)
        config = json.loads(self.blobs.read_range(config_file.sha256, 0, config_file.size)) if config_file else {}
        manifest = model.manifest or Manifest(kind=ModelKind.MODEL)
        gpu = bool(self.inventory.gpus)
        dtype = manifest.dtype or "F32"
        dtype_bytes = _DTYPE_BYTES.get(dtype, 2) if gpu else 4
        return estimate_bytes(manifest, config, dtype_bytes, self.settings.max_model_len)

    # --- reservations ---------------------------------------------------------------------------
    def _free(self, running: list[Endpoint]) -> dict[str, Any]:
        taken_gpus: set[int] = set()
        taken_bytes = 0
        for e in running:
            held = e.reservation or {}
            taken_gpus.update(held.get("gpus", []))
            taken_bytes += int(held.get("memory_bytes", 0))
        gpus = [g.index for g in self.inventory.gpus if g.index not in taken_gpus]
        return {"gpus": gpus, "memory_bytes": self.inventory.cpu_pool_bytes - taken_bytes}

    @staticmethod
    def _take(config: HardwareConfig, replicas: int, free: dict[str, Any]) -> dict[str, Any] | None:
        if config.is_cpu:
            need = config.memory_bytes * replicas
            return {"memory_bytes": need, "replicas": replicas} if need <= free["memory_bytes"] else None
        count = config.gpu_count * replicas
        if count > len(free["gpus"]):
            return None
        return {"gpus": free["gpus"][:count], "gpus_per_replica": config.gpu_count, "replicas": replicas}

    def _reserve(self, s: Any, endpoint: Endpoint, keep: list[int] | None = None) -> None:
        """Take hardware for ``endpoint`` or raise, naming only the caller's own endpoints. ``keep``: the
        GPUs it holds now, taken first, so a rescale never moves a running replica's GPUs to another."""
        config = self._config(endpoint.hardware)
        replicas = replica_count(endpoint)
        others = [e for e in _running(s) if e.id != endpoint.id and e.reservation]
        self._check_share(endpoint, config, replicas, _own(others, endpoint.account_id))
        free = self._free(others)
        kept = [g for g in keep or [] if g in free["gpus"]]
        free["gpus"] = kept + [g for g in free["gpus"] if g not in kept]
        held = self._take(config, replicas, free)
        if held is None:
            raise HardwareUnavailable(
                f"the selected configuration {config.id} x {replicas} replica(s) is not available now: "
                f"{self.inventory.describe()}, held by {_holders(others, endpoint.account_id)}; stop an endpoint or "
                "pick smaller hardware",
                param="hardware",
            )
        endpoint.reservation = held

    def _share_cap(self) -> int:
        return self.inventory.account_cap(self.settings.quota_endpoint_share)

    def _check_share(self, endpoint: Endpoint, config: HardwareConfig, replicas: int, mine: list[Endpoint]) -> None:
        """One account may hold only its share of the host, so others can always deploy too."""
        held = sum(reservation_units(e.reservation) for e in mine)
        want, cap = config_units(config, replicas), self._share_cap()
        if held + want <= cap or cap >= self.inventory.capacity:  # a share of all: only the hardware can say no
            return
        units = self.inventory.describe_units
        holding = f"hold {units(held)} ({', '.join(e.name for e in mine)})" if mine else "hold nothing"
        raise QuotaExceeded(
            f"{config.id} x {replicas} replica(s) needs {units(want)}; this account's running endpoints {holding} "
            f"and may hold {units(cap)} together ({self.settings.quota_endpoint_share:.0%} of this host, "
            "MODELPORT_QUOTA_ENDPOINT_SHARE): stop one of your endpoints or pick smaller hardware",
            param="hardware",
        )

    def _config(self, hardware: str) -> HardwareConfig:
        if not hardware:
            raise HardwareUnavailable(
                "hardware is required; check the hardware API: GET /v1/hardware", param="hardware"
            )
        for config in self.configs():
            if config.id == hardware:
                return config
        offered = ", ".join(c.id for c in self.configs())
        raise HardwareUnavailable(
            f"Invalid hardware provided: {hardware} is not available here ({self.inventory.describe()}). "
            f"Check the hardware API (GET /v1/hardware); this host offers: {offered}",
            param="hardware",
        )

    # --- CRUD -----------------------------------------------------------------------------------
    def validate(self, who: Principal, spec: EndpointSpec) -> tuple[Model, HardwareConfig]:
        """Every check ``create`` makes before it writes: the model, the hardware, the replica counts."""
        model = self.catalog.get_model(who, spec.model)
        if model.kind == ModelKind.ADAPTER:
            raise InvalidRequest(
                f"{model.name} is an adapter: deploy its base model, and the adapter runs on that endpoint",
                param="model",
            )
        config = self._config(spec.hardware)
        need = self._need(model)
        if need > config.memory_bytes:
            context = context_length_of(model.manifest, self.settings.max_model_len)
            raise HardwareUnavailable(
                f"the selected configuration {config.id} is too small for {model.name}: it needs about "
                f"{need / GIB:.1f} GiB (weights + KV cache for {context} "
                f"tokens + 20%), the configuration has {config.memory_bytes / GIB:.1f} GiB",
                param="hardware",
            )
        _check_replicas(spec.min_replicas, spec.max_replicas)
        return model, config

    def create(self, who: Principal, spec: EndpointSpec) -> Endpoint:
        model, config = self.validate(who, spec)
        short = model.name.partition("/")[2] or model.name
        route = self._route_of(who, spec, short)
        name = f"{route.name}/{spec.label}" if spec.label and spec.route_id else route.name
        endpoint = Endpoint(
            id=new_id("endpoint"),
            account_id=who.account_id,
            name=name,
            display_name=spec.display_name or (spec.label if spec.route_id else f"{short} on {config.id}") or name,
            model_id=model.id,
            revision_id=model.revision_id,  # the head, or the revision ``spec.model`` pinned (``name@3``)
            hardware=config.id,
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            disable_speculative_decoding=spec.disable_speculative_decoding,
            disable_prompt_cache=spec.disable_prompt_cache,
            inactive_timeout=spec.inactive_timeout or None,
            route_id=route.id,
            label=spec.label or name.rpartition("/")[2],
            traffic_mode=spec.traffic_mode,
            max_concurrent=spec.max_concurrent,
            autoscaling=spec.autoscaling,
            replicas=initial_replicas(spec.min_replicas, spec.max_replicas),
            etag=new_etag(),
        )
        initialize(endpoint)
        with self._lock, self.db.session() as s:
            if spec.route_id is None:  # a v1 endpoint: a route of its own that sends it everything
                route.traffic = [{"deployment_id": endpoint.id, "weight": 1.0}]
                s.add(route)
                s.flush()
            if spec.state == EndpointState.STARTED and spec.max_replicas > 0:
                self._reserve(s, endpoint)
                move(endpoint, EndpointState.PENDING)
            s.add(endpoint)
        self.on_change()
        return self.get(who, endpoint.id)

    def _route_of(self, who: Principal, spec: EndpointSpec, short: str) -> Route:
        """The route a new deployment joins: the named one, or (v1) a new one named like the endpoint."""
        if spec.route_id is not None:
            with self.db.read() as s:
                route = s.get(Route, spec.route_id)
            if route is None or route.account_id != who.account_id:
                raise NotFound(f"endpoint {spec.route_id!r} not found", param="endpointId")
            return route
        now = utcnow()
        name = f"{who.account_name}/{short}-{secrets.token_hex(4)}"
        return Route(
            id=new_wire_id("ep"),
            account_id=who.account_id,
            name=name,
            traffic=[],
            etag=new_etag(),
            created_at=now,
            updated_at=now,
        )

    def list(self, who: Principal) -> list[Endpoint]:
        with self.db.read() as s:
            query = select(Endpoint).where(Endpoint.account_id == who.account_id).order_by(Endpoint.created_at)
            return list(s.scalars(query))

    def get(self, who: Principal, ref: str) -> Endpoint:
        with self.db.read() as s:
            endpoint = s.scalars(
                select(Endpoint).where(
                    Endpoint.account_id == who.account_id, (Endpoint.id == ref) | (Endpoint.name == ref)
                )
            ).first()
        if endpoint is None:
            raise NotFound(f"endpoint {ref!r} not found", param="endpoint_id")
        return endpoint

    def update(self, who: Principal, ref: str, changes: dict[str, Any]) -> Endpoint:
        endpoint_id = self.get(who, ref).id
        with self._lock, self.db.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            assert endpoint is not None
            check_etag(changes.get("etag"), endpoint.etag, f"deployment {endpoint.label}")
            if changes.get("display_name"):
                endpoint.display_name = str(changes["display_name"])
            if "inactive_timeout" in changes:
                endpoint.inactive_timeout = changes["inactive_timeout"] or None
            autoscaling = changes.get("autoscaling") or {}
            if autoscaling:
                low = int(autoscaling.get("min_replicas", endpoint.min_replicas))
                high = int(autoscaling.get("max_replicas", endpoint.max_replicas))
                _check_replicas(low, high)
                endpoint.min_replicas, endpoint.max_replicas = low, high
                endpoint.replicas = min(max(endpoint.replicas, low, 1), high)
                if high == 0:  # 0/0: the wire's way to stop a deployment
                    changes["state"] = EndpointState.STOPPED
                elif endpoint.state in RUNNING_STATES:  # rescale: re-reserve for the new count
                    keep = list((endpoint.reservation or {}).get("gpus", []))
                    endpoint.reservation = None
                    s.flush()
                    self._reserve(s, endpoint, keep)
                elif changes.get("start_if_scaled"):
                    changes["state"] = EndpointState.STARTED
            if "max_concurrent" in changes:
                endpoint.max_concurrent = changes["max_concurrent"]
            if "autoscaling_spec" in changes:
                endpoint.autoscaling = changes["autoscaling_spec"]
            if changes.get("label") and endpoint.name.endswith(f"/{endpoint.label}"):  # a v2 deployment's name
                renamed = f"{endpoint.name.rpartition('/')[0]}/{changes['label']}"
                if renamed != endpoint.name and s.scalars(select(Endpoint.id).where(Endpoint.name == renamed)).first():
                    raise Conflict(f"deployment {changes['label']} already exists", param="name")
                endpoint.name, endpoint.label = renamed, changes["label"]
            self._apply_state(s, endpoint, changes.get("state"))
            endpoint.updated_at, endpoint.etag = utcnow(), new_etag()
        self.on_change()
        return self.get(who, endpoint_id)

    def _apply_state(self, s: Any, endpoint: Endpoint, state: str | None) -> None:
        if state is None:
            return
        target = on_request(endpoint, state)
        if target == EndpointState.PENDING:
            self._reserve(s, endpoint)
        if target is not None:
            move(endpoint, target)

    def rescale(self, endpoint_id: str, replicas: int) -> None:
        """The autoscaler's move: run ``replicas`` now, re-reserving hardware for them (or raise)."""
        with self._lock, self.db.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            if endpoint is None or endpoint.state not in RUNNING_STATES or endpoint.replicas == replicas:
                return
            held, endpoint.replicas = endpoint.replicas, replicas
            keep = list((endpoint.reservation or {}).get("gpus", []))
            endpoint.reservation = None
            s.flush()
            try:
                self._reserve(s, endpoint, keep)
            except Exception:
                endpoint.replicas = held
                self._reserve(s, endpoint, keep)
                raise
            endpoint.updated_at = utcnow()

    def delete(self, who: Principal, ref: str, etag: str | None = None) -> None:
        """Delete a deployment: out of its route's traffic, and (a v1 endpoint's own route) the route too."""
        found = self.get(who, ref)
        endpoint_id = found.id
        if found.route_id is not None:
            with self.db.read() as s:
                held = s.get(Route, found.route_id)
            for forget in self.forgetters:
                if held is not None:
                    forget(held, endpoint_id)
        with self.db.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            if endpoint is None:
                return
            check_etag(etag, endpoint.etag, f"deployment {endpoint.label}")  # in the transaction that deletes
            route = s.get(Route, endpoint.route_id) if endpoint.route_id else None
            s.delete(endpoint)  # the supervisor stops replicas whose endpoint is gone
            s.flush()
            if route is not None:
                route.traffic = [t for t in route.traffic if t["deployment_id"] != endpoint_id]
                route.etag, route.updated_at = new_etag(), utcnow()
                left = s.scalars(select(Endpoint.id).where(Endpoint.route_id == route.id)).first()
                if left is None and route.name == endpoint.name:
                    s.delete(route)
        self.on_change()

    # --- routing --------------------------------------------------------------------------------
    def find_for_request(self, who: Principal, name: str) -> Endpoint | None:
        """The endpoint a request's ``model`` names: by endpoint name or id, in the caller's account."""
        with self.db.read() as s:
            return s.scalars(
                select(Endpoint).where(
                    Endpoint.account_id == who.account_id, (Endpoint.name == name) | (Endpoint.id == name)
                )
            ).first()

    def started_for_model(self, model_id: str, revision_id: str | None) -> Endpoint | None:
        """A started endpoint that serves this revision of the model."""
        with self.db.read() as s:
            return s.scalars(
                select(Endpoint).where(
                    Endpoint.model_id == model_id,
                    Endpoint.revision_id == revision_id,
                    Endpoint.state == EndpointState.STARTED,
                    Endpoint.traffic_mode == "TRAFFIC_MODE_LIVE",  # a shadow's answers never reach a client
                )
            ).first()

    def touch(self, endpoint_id: str) -> None:
        with self.db.session() as s:
            endpoint = s.get(Endpoint, endpoint_id)
            if endpoint is not None:
                endpoint.last_request_at = utcnow()


def _running(s: Any) -> list[Endpoint]:
    """Every account's endpoints that hold (or are about to hold) hardware: for arithmetic, never for messages."""
    return list(s.scalars(select(Endpoint).where(Endpoint.state.in_(list(RUNNING_STATES)))))


def _own(endpoints: list[Endpoint], account_id: str) -> list[Endpoint]:
    return [e for e in endpoints if e.account_id == account_id]


def _holders(holding: list[Endpoint], account_id: str) -> str:
    """Who holds the hardware, as the caller may see it: its own endpoints by name, others only as others."""
    mine = [e.name for e in _own(holding, account_id)]
    parts = [f"your endpoint(s) {', '.join(mine)}"] if mine else []
    if len(mine) < len(holding):
        parts.append("other accounts' endpoints")
    return " and ".join(parts) or "nothing"


def replica_count(endpoint: Endpoint) -> int:
    """Replicas to run while started: the autoscaler's count, within min and max (0 once scaled to zero)."""
    return max(endpoint.min_replicas, min(endpoint.replicas, endpoint.max_replicas))


def initial_replicas(low: int, high: int) -> int:
    """A new deployment starts with min_replicas, and with one when it may scale to zero."""
    return min(max(low, 1), high)


def new_etag() -> str:
    return secrets.token_hex(8)


def check_etag(given: str | None, current: str, what: str) -> None:
    """A write naming an old etag lost a race with another writer: refuse it (409, not retried)."""
    if given and given != current:
        raise Conflict(f"{what} was changed by another request (etag {given} is stale, now {current}); read it again")


def _check_replicas(low: int, high: int) -> None:
    if low < 0 or high < 0 or low > high:
        raise InvalidRequest("autoscaling needs 0 <= min_replicas <= max_replicas", param="autoscaling")
