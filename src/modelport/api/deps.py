"""FastAPI dependencies shared by every router and the console's pages: the services and the caller's
identity (an API key, or the console's session cookie)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from modelport.accounts.service import AccountService, Principal
from modelport.api.session import SESSION_COOKIE, cookie_session
from modelport.catalog.service import Catalog
from modelport.catalog.transfers import Transfers
from modelport.endpoints.adapters import DeploymentAdapters
from modelport.endpoints.events import Events
from modelport.endpoints.experiments import Experiments
from modelport.endpoints.rollouts import Rollouts
from modelport.endpoints.routes import Routes
from modelport.endpoints.routing import EndpointRouting
from modelport.endpoints.service import EndpointService
from modelport.endpoints.supervisor import Supervisor
from modelport.errors import AuthenticationError
from modelport.ingest.uploads import Uploads
from modelport.services import Services
from modelport.serving.service import InferenceService
from modelport.serving.usage import UsageLedger
from modelport.settings import Settings


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


def get_services(request: Request) -> Services:
    """The parts the composition root built (``services.py``), kept on the app."""
    services: Services = request.app.state.services
    return services


def get_accounts(request: Request) -> AccountService:
    return get_services(request).accounts


def get_endpoints(request: Request) -> EndpointService:
    return get_services(request).live.endpoints


def get_supervisor(request: Request) -> Supervisor:
    return get_services(request).live.supervisor


def get_routes(request: Request) -> Routes:
    return get_services(request).live.routes


def get_events(request: Request) -> Events:
    return get_services(request).live.events


def get_routing(request: Request) -> EndpointRouting:
    return get_services(request).live.routing


def get_experiments(request: Request) -> Experiments:
    return get_services(request).live.experiments


def get_adapters(request: Request) -> DeploymentAdapters:
    return get_services(request).live.adapters


def get_rollouts(request: Request) -> Rollouts:
    return get_services(request).live.rollouts


def get_catalog(request: Request) -> Catalog:
    return get_services(request).catalog


def get_inference(request: Request) -> InferenceService:
    return get_services(request).live.inference


def get_transfers(request: Request) -> Transfers:
    return get_services(request).transfers


def get_uploads(request: Request) -> Uploads:
    return get_services(request).uploads


def get_usage(request: Request) -> UsageLedger:
    return get_services(request).usage


def get_settings(request: Request) -> Settings:
    return get_services(request).settings


# --- the console's session (its pages; ``api/gate.py`` checks it before the body) --------------
class SignInRequired(HTTPException):
    """No valid session: a 401, which the console's pages answer with a redirect to the sign-in page
    (``web/errors.py``)."""

    def __init__(self) -> None:
        super().__init__(401, "sign in first")


def session_key(request: Request) -> str:
    """The session token from the cookie (what the page's CSRF token is made from)."""
    key = request.cookies.get(SESSION_COOKIE)
    if not key:
        raise SignInRequired
    return key


def session_principal(request: Request) -> Principal:
    """The signed-in account, from the cookie alone; ``api/gate.py`` runs it before the body. Blocking."""
    try:
        return get_accounts(request).authenticate_session(request.cookies.get(SESSION_COOKIE))
    except AuthenticationError:
        raise SignInRequired from None


async def web_principal(request: Request, key: Annotated[str, Depends(session_key)]) -> Principal:
    principal = stashed_principal(request)
    if principal is None:  # kept, so an error page for this request can still name the account
        principal = request.state.principal = await run_in_threadpool(session_principal, request)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
TransfersDep = Annotated[Transfers, Depends(get_transfers)]
InferenceDep = Annotated[InferenceService, Depends(get_inference)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
UploadsDep = Annotated[Uploads, Depends(get_uploads)]
UsageDep = Annotated[UsageLedger, Depends(get_usage)]
EndpointsDep = Annotated[EndpointService, Depends(get_endpoints)]
RoutesDep = Annotated[Routes, Depends(get_routes)]
