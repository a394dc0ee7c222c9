"""The CLI's calls to Together v2's endpoint routes (``/v2/projects/null/endpoints…``, WIRE-v2 §3-4, §7).

A v2 endpoint (``ep_…``) is a stable name over deployments (``dep_…``) with a traffic split, rollouts
(``rol_…``), A/B (``abx_…``) and shadow (``exp_…``) experiments, and events. Every v1 endpoint is also
one of these, with a single deployment. The project is the literal ``null``: the server reads it as the
caller's own account, so the CLI needs no project setting.

Path segments are ids (``ep_…``), never names: a v2 endpoint's name holds a ``/`` (``account/name``),
which its routes do not take. ``find`` turns a name into the endpoint by the list's ``filter``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from modelport.cli.client import Client, NotFoundError

P = "/v2/projects/null"
LEVELS = ("debug", "info", "warn", "error")


def bare(name: str) -> str:
    """``account/name`` -> ``name``: what ``POST …/endpoints`` takes, and what a list filter matches too."""
    return name.rpartition("/")[2]


class EndpointsV2:
    def __init__(self, client: Client) -> None:
        self.client = client

    def _get(self, path: str, ref: str, params: Mapping[str, str] | None = None) -> Any:
        return self.client.call("GET", P + path, params=dict(params or {}), resource="endpoint", ref=ref)

    def _send(self, method: str, path: str, ref: str, body: Any = None, **params: str) -> Any:
        kw: dict[str, Any] = {"json": body} if body is not None else {}
        return self.client.call(method, P + path, params=params, resource="endpoint", ref=ref, **kw)

    def _all(self, path: str, ref: str, params: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Every item of a paged list, following ``next_cursor`` (snake_case on this wire)."""
        items: list[dict[str, Any]] = []
        query = dict(params or {})
        while True:
            page = self._get(path, ref, query)
            items += page.get("data") or []
            if not page.get("next_cursor"):
                return items
            query["after"] = page["next_cursor"]

    # --- endpoints --------------------------------------------------------------------------------
    def find(self, ref: str) -> dict[str, Any] | None:
        """The endpoint ``ref`` names (an ``ep_`` id, ``account/name`` or a bare name), or None."""
        if ref.startswith("ep_"):
            try:
                found: dict[str, Any] = self._get(f"/endpoints/{quote(ref, safe='')}", ref)
                return found
            except NotFoundError:
                return None
        listed = self._all("/endpoints", ref, {"filter": f'name="{bare(ref)}"'})
        return next((e for e in listed if ref in (e.get("name"), bare(str(e.get("name"))))), None)

    def get(self, endpoint_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._get(f"/endpoints/{endpoint_id}", endpoint_id)
        return found

    def create(self, name: str) -> dict[str, Any]:
        created: dict[str, Any] = self._send("POST", "/endpoints", name, {"name": bare(name)})
        return created

    def delete(self, endpoint: Mapping[str, Any]) -> None:
        self._send("DELETE", f"/endpoints/{endpoint['id']}", str(endpoint["name"]), etag=str(endpoint["etag"]))

    def set_split(self, endpoint: Mapping[str, Any], split: Iterable[tuple[str, float]]) -> dict[str, Any]:
        """Replace the traffic split; the etag read with ``endpoint`` makes a concurrent change a 409."""
        body = {"etag": endpoint["etag"], "trafficSplit": [{"deploymentId": d, "weight": w} for d, w in split]}
        path = f"/endpoints/{endpoint['id']}"
        patched: dict[str, Any] = self._send("PATCH", path, str(endpoint["name"]), body, updateMask="trafficSplit")
        return patched

    # --- deployments ------------------------------------------------------------------------------
    def deployments(self, endpoint_id: str) -> list[dict[str, Any]]:
        return self._all(f"/endpoints/{endpoint_id}/deployments", endpoint_id)

    def create_deployment(self, endpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
        # Its 404 is about the model: the endpoint was just read.
        path = f"{P}/endpoints/{endpoint_id}/deployments"
        created: dict[str, Any] = self.client.call("POST", path, json=body, resource="model", ref=body.get("modelId"))
        return created

    # --- rollouts ---------------------------------------------------------------------------------
    def rollout(self, endpoint_id: str, rollout_id: str) -> dict[str, Any]:
        found: dict[str, Any] = self._get(f"/endpoints/{endpoint_id}/rollouts/{rollout_id}", rollout_id)
        return found

    def active_rollouts(self, endpoint_id: str) -> list[dict[str, Any]]:
        return self._all(f"/endpoints/{endpoint_id}/rollouts", endpoint_id, {"filter": "ROLLOUT_FILTER_ACTIVE"})

    def create_rollout(self, endpoint_id: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self._send("POST", f"/endpoints/{endpoint_id}/rollouts", endpoint_id, body)
        return created

    def act_on_rollout(self, endpoint_id: str, rollout_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """``start`` (with an empty body, as the wire has it), ``pause``, ``resume``, ``promote`` or ``cancel``."""
        path = P + f"/endpoints/{endpoint_id}/rollouts/{rollout_id}/{action}"
        kw: dict[str, Any] = {"json": body} if body else {"content": b""}
        done: dict[str, Any] = self.client.call("POST", path, resource="rollout", ref=rollout_id, **kw)
        return done

    # --- experiments and events -------------------------------------------------------------------
    def ab_experiments(self, endpoint_id: str) -> list[dict[str, Any]]:
        return self._all(f"/endpoints/{endpoint_id}/abExperiments", endpoint_id)

    def shadow_experiments(self, endpoint_id: str) -> list[dict[str, Any]]:
        return self._all(f"/endpoints/{endpoint_id}/shadowExperiments", endpoint_id, {"includeTargets": "true"})

    def events(
        self, endpoint_id: str, *, min_level: str | None = None, deployment_ids: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        params = {"minLevel": f"LEVEL_{min_level.upper()}"} if min_level else {}
        if ids := ",".join(deployment_ids):
            params["deploymentIds"] = ids  # comma-joined, as the wire sends arrays
        return self._all(f"/endpoints/{endpoint_id}/events", endpoint_id, params)

    # --- models, for showing a deployment's model by name -----------------------------------------
    def model_names(self) -> dict[str, str]:
        """``ml_…`` -> ``account/name`` for the caller's models."""
        return {str(m["id"]): str(m["name"]) for m in self._all("/models", "")}
