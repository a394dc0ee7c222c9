"""What this server can really run, in Together 3.x's terms: supported models, configs and instance types.

- A **supported model** is one of the caller's ready full models (there is no public catalog here),
  with one deployment profile per hardware configuration of this host that can hold it.
- A **config** (``cr_<hardware id>``) is one hardware configuration (``endpoints/hardware.py``), its
  selectors the ones the ``tg`` CLI reads (``accelerator_type``, ``accelerator_count``, ``adapter_mode``:
  adapters load on demand next to their base, so ``dynamic``). Configs are the host's, so every
  project lists the same ones; ``referenceModelId`` narrows them to those that fit that model.
- An **instance type** is a configuration with its price (``/v1/hardware``'s, per hour).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from modelport.accounts.service import Principal
from modelport.api.deps import CatalogDep, EndpointsDep, PrincipalDep
from modelport.api.together.convert import iso
from modelport.api.together.v2 import ProjectDep, model_path, page
from modelport.endpoints.hardware import HardwareConfig
from modelport.endpoints.service import EndpointService
from modelport.errors import NotFound
from modelport.ids import wire_model_id
from modelport.manifest import ModelKind, ModelType
from modelport.storage.db.tables import Model

router = APIRouter()
CONFIG_PREFIX = "cr_"
CAPABILITIES = {
    ModelType.CHAT: ["CAPABILITY_CHAT", "CAPABILITY_COMPLETION"],
    ModelType.LANGUAGE: ["CAPABILITY_COMPLETION"],
    ModelType.EMBEDDING: ["CAPABILITY_EMBEDDING"],
}


def instance_name(c: HardwareConfig) -> str:
    """The hardware name the CLI prints, ``{count}x{type}``."""
    return f"{c.gpu_count}x{c.gpu_type}"


def config_json(c: HardwareConfig, project: str, reference: Model | None) -> dict[str, Any]:
    selectors = [
        {"key": "accelerator_type", "value": c.gpu_type},
        {"key": "accelerator_count", "value": str(c.gpu_count)},
        {"key": "adapter_mode", "value": "dynamic"},
    ]
    body: dict[str, Any] = {"id": CONFIG_PREFIX + c.id, "projectId": project, "selectors": selectors}
    if reference is not None:
        body["referenceModel"], body["referenceModelId"] = model_path(reference), wire_model_id(reference.id)
    return body


def _fitting(endpoints: EndpointService, who: Principal, model: Model) -> list[HardwareConfig]:
    return [a.config for a in endpoints.hardware(who, model.id) if a.status != "insufficient"]


def supported_json(m: Model, configs: list[HardwareConfig]) -> dict[str, Any]:
    manifest = m.manifest
    profiles = [
        {
            "profileId": f"{wire_model_id(m.id)}-{c.id}",
            "model": model_path(m),
            "config": f"projects/{m.account_id}/configs/{CONFIG_PREFIX}{c.id}",
            "modelName": m.name,
            "gpuCount": c.gpu_count,
            "gpuType": c.gpu_type,
            "quantization": (manifest.dtype if manifest else None) or "",
            "adapterMode": "ADAPTER_MODE_DYNAMIC",
        }
        for c in configs
    ]
    body: dict[str, Any] = {
        "id": wire_model_id(m.id),
        "name": m.name,
        "baseModel": model_path(m),
        "baseModelId": wire_model_id(m.id),
        "displayName": m.name.partition("/")[2],
        "publisher": m.name.partition("/")[0],
        "status": "SUPPORTED_MODEL_STATUS_SUPPORTED",
        "capabilities": CAPABILITIES.get(ModelType(m.type or ModelType.LANGUAGE), []),
        "products": ["PRODUCT_SERVERLESS", "PRODUCT_DEDICATED"],
        "inputModalities": ["MODALITY_TEXT"],
        "outputModalities": ["MODALITY_TEXT"],
        "deploymentProfiles": profiles,
        "createdAt": iso(m.created_at),
        "updatedAt": iso(m.created_at),
    }
    if manifest is not None and manifest.architecture:
        body["architecture"] = manifest.architecture
    if manifest is not None and manifest.context_length:
        body["contextLength"] = str(manifest.context_length)
    return body


def _bases(catalog: Any, who: Principal) -> list[Model]:
    return [m for m in catalog.list_models(who) if m.kind == ModelKind.MODEL]


@router.get("/supported-models")
def list_supported(
    who: PrincipalDep,
    catalog: CatalogDep,
    endpoints: EndpointsDep,
    search: str | None = None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    needle = (search or "").lower()
    models = [m for m in _bases(catalog, who) if needle in m.name.lower() or needle in wire_model_id(m.id)]
    return page(models, lambda m: supported_json(m, _fitting(endpoints, who, m)), "id", limit, after)


@router.get("/supported-models/{model_id:path}")
def get_supported(model_id: str, who: PrincipalDep, catalog: CatalogDep, endpoints: EndpointsDep) -> dict[str, Any]:
    model = catalog.get_model(who, model_id)
    if model.kind != ModelKind.MODEL:
        raise NotFound(f"{model.name} is an adapter: it deploys on its base model", param="id")
    return supported_json(model, _fitting(endpoints, who, model))


@router.get("/projects/{project_id}/configs")
def list_configs(
    who: ProjectDep,
    catalog: CatalogDep,
    endpoints: EndpointsDep,
    reference_model_id: Annotated[str | None, Query(alias="referenceModelId")] = None,
    reference_model: Annotated[str | None, Query(alias="referenceModel")] = None,
    limit: int | None = None,
    after: str | None = None,
) -> dict[str, Any]:
    ref = reference_model_id or (reference_model or "").rsplit("/", 1)[-1] or None
    model = catalog.get_model(who, ref) if ref else None
    if model is not None and model.kind == ModelKind.ADAPTER:  # an adapter runs on its base's configs
        model = catalog.get_model(who, model.base_model_id or "")
    configs = _fitting(endpoints, who, model) if model else endpoints.configs()
    return page(configs, lambda c: config_json(c, who.account_id, model), "id", limit, after)


@router.get("/projects/{project_id}/configs/{config_id}")
def get_config(config_id: str, who: ProjectDep, endpoints: EndpointsDep) -> dict[str, Any]:
    return config_json(_config(endpoints, config_id), who.account_id, None)


def _config(endpoints: EndpointService, config_id: str) -> HardwareConfig:
    wanted = config_id.removeprefix(CONFIG_PREFIX)
    found = next((c for c in endpoints.configs() if c.id == wanted or instance_name(c) == wanted), None)
    if found is None:
        raise NotFound(f"config {config_id!r} not found", param="id")
    return found


def instance_type_json(c: HardwareConfig) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": instance_name(c),
        "gpuCount": c.gpu_count,
        "gpuType": c.gpu_type,
        "priceCentsPerHour": round(c.cents_per_minute * 60),
        "regions": [{"name": "local"}],
    }


@router.get("/public/inference-instance-types")
def list_instance_types(
    who: PrincipalDep, endpoints: EndpointsDep, limit: int | None = None, after: str | None = None
) -> dict[str, Any]:
    return page(endpoints.configs(), instance_type_json, "id", limit, after)


@router.get("/public/inference-instance-types/{type_id}")
def get_instance_type(type_id: str, who: PrincipalDep, endpoints: EndpointsDep) -> dict[str, Any]:
    return instance_type_json(_config(endpoints, type_id))
