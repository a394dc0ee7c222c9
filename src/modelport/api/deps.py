"""FastAPI dependencies shared by every router: the services and the caller's identity."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from modelport.accounts.service import AccountService, Principal
from modelport.catalog.service import Catalog
from modelport.endpoints.service import EndpointService
from modelport.ingest.uploads import Uploads
from modelport.serving.service import InferenceService
from modelport.settings import Settings
from modelport.web.session import cookie_session


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def authenticate(request: Request) -> Principal:
    """The caller, from ``Authorization: Bearer`` or else the web console's session cookie (with its
    CSRF header on changes). Reads only headers, so ``api/gate.py`` runs it before the body; blocking."""
    accounts = get_accounts(request)
    key = _bearer(request)
    return accounts.authenticate(key) if key else accounts.authenticate_session(cookie_session(request))


def stashed_principal(request: Request) -> Principal | None:
    """The caller as ``api/gate.py`` found it for this request, if it did."""
    principal = getattr(request.state, "principal", None)
    return principal if isinstance(principal, Principal) else None


async def get_principal(request: Request) -> Principal:
    """The caller: from the gate (no second lookup), else authenticated here."""
    principal = stashed_principal(request)
    if principal is None:
        principal = request.state.principal = await run_in_threadpool(authenticate, request)
    return principal


def get_accounts(request: Request) -> AccountService:
    accounts: AccountService = request.app.state.accounts
    return accounts


def get_endpoints(request: Request) -> EndpointService:
    endpoints: EndpointService = request.app.state.endpoints
    return endpoints


def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


def get_inference(request: Request) -> InferenceService:
    inference: InferenceService = request.app.state.inference
    return inference


def get_uploads(request: Request) -> Uploads:
    uploads: Uploads = request.app.state.uploads
    return uploads


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


PrincipalDep = Annotated[Principal, Depends(get_principal)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
InferenceDep = Annotated[InferenceService, Depends(get_inference)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
UploadsDep = Annotated[Uploads, Depends(get_uploads)]
