"""Which engine answers a request: a started endpoint's replicas, or the server's own engine."""

from __future__ import annotations

from modelport.accounts.service import Principal
from modelport.endpoints.service import EndpointService
from modelport.endpoints.supervisor import Supervisor
from modelport.serving.engine import Engine
from modelport.storage.db.tables import Endpoint


class EndpointRouting:
    def __init__(self, endpoints: EndpointService, supervisor: Supervisor) -> None:
        self.endpoints, self.supervisor = endpoints, supervisor

    def by_name(self, who: Principal, name: str) -> tuple[Endpoint, Engine] | None:
        """``name`` is one of the caller's endpoints: its least-loaded replica (or a clear error)."""
        endpoint = self.endpoints.find_for_request(who, name)
        if endpoint is None:
            return None
        return endpoint, self.supervisor.engine_for(endpoint)

    def for_model(self, model_id: str, revision_id: str | None) -> Engine | None:
        """A model (or an adapter's base) with a started endpoint serving that revision runs there."""
        endpoint = self.endpoints.started_for_model(model_id, revision_id)
        return self.supervisor.engine_for(endpoint) if endpoint is not None else None
