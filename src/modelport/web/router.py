"""The console's pages. Each one is a thin view over the same services the JSON API uses.

Forms post back here with the session's CSRF token; the browser's scripts (uploads, live job progress,
the playground) call the JSON API itself with the session cookie and the token in ``X-CSRF-Token``.
"""

from __future__ import annotations

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
    get_settings,
    get_supervisor,
    get_uploads,
    session_key,
    web_principal,
)
from modelport.api.session import SESSION_COOKIE, csrf_ok, csrf_token, from_this_site
from modelport.catalog.service import UploadRequest
from modelport.endpoints.service import EndpointSpec
from modelport.errors import AuthenticationError, Conflict, ModelportError, NotFound, PermissionDenied
from modelport.humanize import human_bytes, human_count
from modelport.manifest import ModelKind, ModelType
from modelport.web import views

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
TEMPLATES.env.filters.update(bytes=human_bytes, count=human_count, when=views.when)
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
def signin_page(request: Request, next: str = "/models") -> Response:
    return page(request, "signin.html", None, None, next=views.local_path(next))


@router.post("/signin", response_class=HTMLResponse)
def signin(request: Request, api_key: Annotated[str, Form()], next: Annotated[str, Form()] = "/models") -> Response:
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


@router.get("/")
def home() -> Response:
    return back("/models")


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
@router.get("/endpoints", response_class=HTMLResponse)
def endpoints_page(request: Request, who: Who, key: Key) -> Response:
    service, catalog = get_endpoints(request), get_catalog(request)
    supervisor = get_supervisor(request)
    rows = [
        views.endpoint_row(e, catalog.get_model(who, e.model_id).name, supervisor.ready_replicas(e.id))
        for e in service.list(who)
    ]
    return page(request, "endpoints.html", key, who, endpoints=rows)


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
    request: Request, ref: str, action: str, who: Who, key: Key, csrf_token: Annotated[str, Form()]
) -> Response:
    check_csrf(key, csrf_token)
    service = get_endpoints(request)
    if action == "delete":
        service.delete(who, ref)
    elif action in ("start", "stop"):
        service.update(who, ref, {"state": "STARTED" if action == "start" else "STOPPED"})
    else:
        raise NotFound(f"no action {action!r}")
    return back("/endpoints")


# --- playground and keys ------------------------------------------------------------------------
@router.get("/playground", response_class=HTMLResponse)
def playground(request: Request, who: Who, key: Key, model: str = "") -> Response:
    targets = [m.name for m in get_catalog(request).list_models(who) if m.type != ModelType.EMBEDDING]
    targets += [e.name for e in get_endpoints(request).list(who)]
    return page(request, "playground.html", key, who, targets=targets, selected=model)


@router.get("/keys", response_class=HTMLResponse)
def keys_page(request: Request, who: Who, key: Key) -> Response:
    accounts = get_accounts(request)
    return page(request, "keys.html", key, who, keys=accounts.list_keys_as(who))


@router.post("/keys", response_class=HTMLResponse)
def create_key(
    request: Request, who: Who, key: Key, csrf_token: Annotated[str, Form()], account: Annotated[str, Form()] = ""
) -> Response:
    """Answers with the page itself (not a redirect), so the new key is shown once and never in a URL."""
    check_csrf(key, csrf_token)
    accounts = get_accounts(request)
    info, new_key = accounts.create_key_as(who, account.strip() or None)
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
