"""The console's pages. Each one is a thin view over the same services the JSON API uses.

Forms post back here with the session's CSRF token; the browser's scripts (uploads, live job progress,
the playground) call the JSON API itself with the session cookie and the token in ``X-CSRF-Token``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from modelport.accounts.service import Principal
from modelport.api.deps import (
    get_accounts,
    get_catalog,
    get_endpoints,
    get_rollouts,
    get_services,
    get_settings,
    get_uploads,
    get_usage,
    session_key,
    web_principal,
)
from modelport.api.session import SESSION_COOKIE, csrf_ok, csrf_token, from_this_site
from modelport.catalog.service import UploadRequest
from modelport.endpoints.experiment_rules import AB, SHADOW_KIND, compare
from modelport.endpoints.routes import LIVE
from modelport.endpoints.service import EndpointSpec
from modelport.endpoints.states import RUNNING_STATES
from modelport.endpoints.traffic import shares
from modelport.errors import AuthenticationError, Conflict, ModelportError, NotFound, PermissionDenied
from modelport.humanize import human_bytes, human_count
from modelport.manifest import ModelKind, ModelType, context_length_of
from modelport.storage.db.tables import Endpoint, Rollout, Route
from modelport.web import endpoint_views, views

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.filters.update(bytes=human_bytes, count=human_count, when=views.when, when_unix=views.when_unix)
STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


Who = Annotated[Principal, Depends(web_principal)]
Key = Annotated[str, Depends(session_key)]


def check_csrf(key: str, token: str) -> None:
    if not csrf_ok(key, token):
        raise PermissionDenied("the form is stale or came from another site: reload the page and try again")


def page(
    request: Request, name: str, key: str | None, who: Principal | None, status: int = 200, **ctx: Any
) -> Response:
    context = {"who": who, "csrf": csrf_token(key) if key else "", "path": request.url.path, **ctx}
    return TEMPLATES.TemplateResponse(request, name, context, status_code=status)


def back(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)  # after a POST, the browser GETs the result


# --- signing in ---------------------------------------------------------------------------------
@router.get("/signin", response_class=HTMLResponse)
def signin_page(request: Request, next: str = "/") -> Response:
    return page(request, "signin.html", None, None, next=views.local_path(next))


@router.post("/signin", response_class=HTMLResponse)
def signin(request: Request, api_key: Annotated[str, Form()], next: Annotated[str, Form()] = "/") -> Response:
    settings = get_settings(request)
    if not from_this_site(request, settings.web_origins.split(",") if settings.web_origins else ()):
        # Login CSRF: another site's form must not sign this browser into an account of its choosing.
        error = "This sign-in form was sent from another site. Sign in on this page instead."
        return page(request, "signin.html", None, None, 403, next=views.local_path(next), error=error)
    try:
        session = get_accounts(request).open_session(api_key.strip())
    except AuthenticationError:
        return page(request, "signin.html", None, None, 401, next=next, error="That API key is not valid.")
    response = back(views.local_path(next))
    secure = request.url.scheme == "https"
    max_age = int(settings.web_session_ttl_s)
    response.set_cookie(SESSION_COOKIE, session, max_age=max_age, httponly=True, samesite="strict", secure=secure)
    return response


@router.post("/signout")
def signout(key: Key, csrf_token: Annotated[str, Form()]) -> Response:
    check_csrf(key, csrf_token)
    response = back("/signin")
    response.delete_cookie(SESSION_COOKIE)
    return response


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, who: Who, key: Key) -> Response:
    """The account at a glance: its models, endpoints, latest jobs and the last days' usage."""
    catalog = get_catalog(request)
    models = catalog.list_models(who)
    endpoints = _route_rows(request, who)
    today = datetime.now(UTC).date()
    since = today - timedelta(days=views.USAGE_DAYS - 1)
    usage = get_usage(request).list(who, since=since, account=who.account_name)
    return page(
        request, "dashboard.html", key, who,
        models=[views.model_row(m, None) for m in models[:8]], model_count=len(models),
        endpoints=endpoints[:8], endpoint_count=len(endpoints),
        jobs=[views.job_row(v) for v in catalog.list_jobs(who, limit=5)],
        usage=views.usage_days(usage, since, today),
    )  # fmt: skip


# --- models and jobs ----------------------------------------------------------------------------
@router.get("/models", response_class=HTMLResponse)
def models_page(request: Request, who: Who, key: Key) -> Response:
    catalog = get_catalog(request)
    models = catalog.list_models(who)
    names = {m.id: m.name for m in models}
    rows = [views.model_row(m, names.get(m.base_model_id or "")) for m in models]
    jobs = [views.job_row(v) for v in catalog.list_jobs(who, limit=20)]
    return page(request, "models.html", key, who, models=rows, jobs=jobs)


@router.get("/models/new", response_class=HTMLResponse)
def new_model_page(request: Request, who: Who, key: Key) -> Response:
    return _new_model_form(request, who, key, 200, {}, None)


@router.post("/models/new", response_class=HTMLResponse)
def new_model(request: Request, who: Who, key: Key, form: Annotated[views.NewModelForm, Form()]) -> Response:
    """Without scripts, or for a repo or URL source: the form posts here. A picked file is checked and
    sent by the page's script through the JSON API instead, so a refusal never loses the file."""
    check_csrf(key, form.csrf_token)
    base = (form.base_model or None) if form.model_type == "adapter" else None
    try:
        submitted = get_catalog(request).submit_upload(
            who,
            UploadRequest(
                model_name=form.model_name,
                model_source=form.source(),
                model_type=form.model_type,
                hf_token=form.hf_token or None,
                description=form.description or None,
                base_model=base,
            ),
        )
    except ModelportError as e:
        error = views.form_error(e, form.model_name, form.model_type, form.base_model)
        shown = form.model_dump(exclude={"hf_token", "csrf_token"})  # a secret is never sent back
        return _new_model_form(request, who, key, e.status_code, shown, error)
    return back(f"/jobs/{submitted.job_id}")


def _new_model_form(
    request: Request, who: Principal, key: str, status: int, form: dict[str, Any], error: views.FormError | None
) -> Response:
    bases = [m.name for m in get_catalog(request).list_models(who) if m.kind == ModelKind.MODEL]
    return page(
        request, "new_model.html", key, who, status, bases=bases, form=form, error=error, words=views.form_words()
    )


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str, who: Who, key: Key) -> Response:
    view = get_catalog(request).get_job(who, job_id)
    return page(request, "job.html", key, who, job=views.job_detail(view))


@router.get("/models/{ref:path}", response_class=HTMLResponse)
def model_page(request: Request, ref: str, who: Who, key: Key) -> Response:
    catalog = get_catalog(request)
    model = catalog.get_model(who, ref)
    hardware = get_endpoints(request).hardware(who, model.name)
    deployed = [e for e in get_endpoints(request).list(who) if e.model_id == model.id]
    return page(
        request, "model.html", key, who,
        model=views.model_detail(model, catalog.base_name(model)),
        snippets=views.usage_snippets(model.name, model.type, str(request.base_url)),
        revisions=[views.revision_row(r, model.revision_id) for r in reversed(catalog.revisions(who, model.id))],
        hardware=[views.hardware_row(a) for a in hardware],
        endpoints=deployed,
    )  # fmt: skip


@router.post("/models/{ref:path}/delete")
def delete_model(request: Request, ref: str, who: Who, key: Key, csrf_token: Annotated[str, Form()]) -> Response:
    check_csrf(key, csrf_token)
    model = get_catalog(request).delete_model(who, ref)
    return back(f"/models?deleted={quote(model.name)}")


# --- endpoints ----------------------------------------------------------------------------------
RECENT_EVENTS = 20


@router.get("/endpoints", response_class=HTMLResponse)
def endpoints_page(request: Request, who: Who, key: Key) -> Response:
    """Every endpoint (a route: a v1 endpoint is one with a single deployment), with its split."""
    return page(request, "endpoints.html", key, who, endpoints=_route_rows(request, who))


def _route_rows(request: Request, who: Principal) -> list[dict[str, Any]]:
    """The caller's endpoints as the list and the dashboard show them."""
    routes = get_services(request).live.routes
    rows = []
    for route in routes.listed(who):
        deployments = routes.deployments(route.id)
        rows.append(endpoint_views.route_row(route, deployments, _measured(request, who, route, deployments)))
    return rows


def _measured(
    request: Request, who: Principal, route: Route, deployments: list[Endpoint], revisions: bool = False
) -> endpoint_views.Measured:
    """What the pages show beside the rows: shares, ready replicas, model names (and revision numbers)."""
    live = get_services(request).live
    effective = shares(
        route.traffic, {d.id for d in deployments if d.traffic_mode == LIVE}, live.routes.experiments(route.id)
    )
    catalog = get_catalog(request)
    models = {d.model_id: catalog.get_model(who, d.model_id).name for d in deployments}
    numbers = {r.id: r.number for m in models for r in catalog.revisions(who, m)} if revisions else {}
    ready = {d.id: live.supervisor.ready_replicas(d.id) for d in deployments}
    return endpoint_views.Measured(effective, ready, models, numbers)


@router.post("/endpoints")
def create_endpoint(request: Request, who: Who, key: Key, form: Annotated[views.EndpointForm, Form()]) -> Response:
    check_csrf(key, form.csrf_token)
    spec = EndpointSpec(
        model=form.model,
        hardware=form.hardware,
        min_replicas=form.min_replicas,
        max_replicas=form.max_replicas,
        display_name=form.display_name or None,
        inactive_timeout=form.inactive_timeout,
    )
    get_endpoints(request).create(who, spec)
    return back("/endpoints")


@router.post("/endpoints/{ref:path}/{action}")
def endpoint_action(
    request: Request,
    ref: str,
    action: str,
    who: Who,
    key: Key,
    csrf_token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/endpoints",
) -> Response:
    """Start, stop or delete one deployment (a v1 endpoint, or one of an endpoint's by its full name)."""
    check_csrf(key, csrf_token)
    service = get_endpoints(request)
    if action == "delete":
        _delete_deployment(request, who, ref)
    elif action in ("start", "stop"):
        service.update(who, ref, {"state": "STARTED" if action == "start" else "STOPPED"})
    else:
        raise NotFound(f"no action {action!r}")
    return back(views.local_path(next))


def _delete_deployment(request: Request, who: Principal, ref: str) -> None:
    """A v1 endpoint goes with its route. One of several deployments goes through its route, which refuses
    while it runs or while a rollout or an experiment names it (traffic must not point at nothing)."""
    deployment = get_endpoints(request).get(who, ref)
    routes = get_services(request).live.routes
    route = routes.get(who, deployment.route_id) if deployment.route_id else None
    if route is None or route.name == deployment.name:
        get_endpoints(request).delete(who, ref)
    else:
        routes.delete_deployment(who, route, deployment.id, None)


@router.get("/endpoints/{name:path}", response_class=HTMLResponse)
def endpoint_page(request: Request, name: str, who: Who, key: Key) -> Response:
    """One endpoint: its deployments and split, its rollout's progress, its experiments and events. After
    the more specific ``/endpoints…`` routes: a name holds a ``/``."""
    live = get_services(request).live
    route = live.routes.get(who, name)
    deployments = live.routes.deployments(route.id)
    measured = _measured(request, who, route, deployments, revisions=True)
    labels = endpoint_views.labels_of(deployments)
    rows = endpoint_views.deployment_rows(route, deployments, measured)
    for row, deployment in zip(rows, deployments, strict=True):
        row["replica_views"] = live.supervisor.replica_views(deployment.id)
    kind = get_catalog(request).get_model(who, deployments[0].model_id).type if deployments else None
    return page(
        request, "endpoint.html", key, who,
        endpoint=endpoint_views.route_row(route, deployments, measured),
        deployments=rows,
        snippets=views.usage_snippets(route.name, kind, str(request.base_url)),
        rollout=endpoint_views.rollout_view(_rollout(request, route), labels),
        ab=endpoint_views.ab_rows(live.experiments.list(route, AB), labels),
        shadow=_shadow_rows(request, route, labels),
        events=endpoint_views.event_rows(live.events.list(route.id)[-RECENT_EVENTS:], labels),
    )  # fmt: skip


def _rollout(request: Request, route: Route) -> Rollout | None:
    """The rollout in progress, else the latest one (to show how it ended), else None."""
    rollouts = get_rollouts(request)
    active = get_services(request).live.routes.active_rollout(route.id)
    if active is not None:
        return rollouts.get(route, active)
    listed = rollouts.listed(route)
    return listed[-1] if listed else None


def _shadow_rows(request: Request, route: Route, labels: dict[str, str]) -> list[dict[str, Any]]:
    live = get_services(request).live
    sources = live.experiments.live_sources(route)
    return endpoint_views.shadow_rows(
        live.experiments.list(route, SHADOW_KIND),
        labels,
        live.routing.mirrored,
        lambda deployment: compare(live.routing.stats, deployment, sources),
    )


# --- playground and keys ------------------------------------------------------------------------
@router.get("/playground", response_class=HTMLResponse)
def playground(request: Request, who: Who, key: Key, model: str = "") -> Response:
    """Chat with what can answer now: ready models and adapters, endpoints with a deployment running (by
    the endpoint's name, or a deployment's full name to pin one); stopped endpoints listed apart, each
    with a Start button when it has one deployment."""
    cap = get_settings(request).max_model_len
    catalog = get_catalog(request)
    models = {m.id: m for m in catalog.list_models(who)}
    # Each target's context bounds Max tokens (a prompt needs room too).
    contexts = {m.name: context_length_of(m.manifest, cap) for m in models.values() if m.type != ModelType.EMBEDDING}
    routes = get_services(request).live.routes
    stopped: list[dict[str, Any]] = []
    for route in routes.listed(who):
        deployments = routes.deployments(route.id)
        chat = [d for d in deployments if d.model_id in models and models[d.model_id].type != ModelType.EMBEDDING]
        running = [d for d in chat if d.state in RUNNING_STATES]
        for d in running:
            context = context_length_of(models[d.model_id].manifest, cap)
            contexts.setdefault(route.name, context)
            if len(deployments) > 1:
                contexts[d.name] = context
        if chat and not running:
            start = deployments[0].name if len(deployments) == 1 else None
            stopped.append({"name": route.name, "state": deployments[0].state, "start": start})
    return page(
        request, "playground.html", key, who, targets=list(contexts), selected=model, contexts=contexts, stopped=stopped
    )


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, who: Who, key: Key) -> Response:
    accounts = get_accounts(request)
    return page(request, "keys.html", key, who, keys=accounts.list_keys_as(who))


@router.post("/keys", response_class=HTMLResponse)
def create_key(
    request: Request,
    who: Who,
    key: Key,
    csrf_token: Annotated[str, Form()],
    account: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
) -> Response:
    """Answers with the page itself (not a redirect), so the new key is shown once and never in a URL."""
    check_csrf(key, csrf_token)
    accounts = get_accounts(request)
    info, new_key = accounts.create_key_as(who, account.strip() or None, name)
    return page(request, "keys.html", key, who, keys=accounts.list_keys_as(who), new_key=new_key, new_info=info)


# --- uploads ------------------------------------------------------------------------------------
@router.get("/uploads", response_class=HTMLResponse)
def uploads_page(request: Request, who: Who, key: Key) -> Response:
    return _uploads(request, who, key)


@router.post("/uploads/{upload_id}/delete", response_class=HTMLResponse)
def delete_upload(request: Request, upload_id: str, who: Who, key: Key, csrf_token: Annotated[str, Form()]) -> Response:
    check_csrf(key, csrf_token)
    try:
        get_uploads(request).delete(who, upload_id)
    except Conflict as e:  # a job still reads it: say so on the list itself
        return _uploads(request, who, key, e.status_code, error=e.message)
    return back("/uploads")


def _uploads(request: Request, who: Principal, key: str, status: int = 200, error: str | None = None) -> Response:
    rows = [views.upload_row(v) for v in get_uploads(request).list(who)]
    ttl = views.duration(get_settings(request).upload_ttl_s)
    return page(request, "uploads.html", key, who, status, uploads=rows, ttl=ttl, error=error)


@router.post("/keys/{key_id}/revoke")
def revoke_key(request: Request, key_id: str, who: Who, key: Key, csrf_token: Annotated[str, Form()]) -> Response:
    check_csrf(key, csrf_token)
    accounts = get_accounts(request)
    accounts.revoke_key_as(who, key_id)
    return back("/keys")
