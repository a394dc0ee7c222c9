"""Every dialect renders every domain error; each dialect's envelope is pinned, down to OpenAI's ``type``.

The error tree is read from ``modelport/errors.py`` itself: an error class added later must get its
OpenAI ``type`` pinned here, and one defined anywhere else fails ``test_domain_errors_live_in_errors_py``.
"""

from __future__ import annotations

import ast
import html
import inspect
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel

import modelport
from modelport import errors as domain
from modelport.api import errors
from modelport.api.deps import SignInRequired
from modelport.api.openai.errors import stream_error
from modelport.errors import AdmissionFailed, ModelportError, ValidationFailed
from modelport.web.errors import PAGES

# OpenAI's ``type`` for each error, as the wire has always said it: clients branch on these.
OPENAI_TYPES = {
    "ModelportError": "server_error",
    "AuthenticationError": "authentication_error",
    "PermissionDenied": "permission_error",
    "NotFound": "not_found_error",
    "RequestTooLarge": "invalid_request_error",
    "UploadTooLarge": "invalid_request_error",
    "QuotaExceeded": "rate_limit_error",
    "RateLimited": "rate_limit_error",
    "DatabaseUnavailable": "server_error",
    "BlobUnavailable": "server_error",
    "EngineOverloaded": "server_error",
    "EngineRestarted": "server_error",
    "EngineFailed": "server_error",
    "Conflict": "conflict_error",
    "ModelNameTaken": "conflict_error",
    "InvalidRequest": "invalid_request_error",
    "InvalidSource": "invalid_request_error",
    "PresignedUrlExpiring": "invalid_request_error",
    "InvalidModelName": "invalid_request_error",
    "BaseModelNotFound": "invalid_request_error",
    "UnsupportedParameter": "invalid_request_error",
    "ContextLengthExceeded": "invalid_request_error",
    "WrongModelType": "invalid_request_error",
    "TemplateMissing": "invalid_request_error",
    "ChatTemplateBudgetExceeded": "invalid_request_error",
    "HardwareUnavailable": "invalid_request_error",
    "EndpointNotRunning": "invalid_request_error",
    "IngestError": "ingest_error",
    "SourceUnavailable": "ingest_error",
    "FetchRefused": "ingest_error",
    "SourceTooSlow": "ingest_error",
    "ArchiveRejected": "ingest_error",
    "NeedsRandomAccess": "ingest_error",
    "ExtractionStopped": "ingest_error",
    "StagingFull": "ingest_error",
    "StorageQuotaFull": "ingest_error",
    "ValidationFailed": "ingest_error",
    "AdmissionFailed": "ingest_error",
}
ERRORS: dict[str, type[ModelportError]] = {
    name: kind
    for name, kind in vars(domain).items()
    if inspect.isclass(kind) and issubclass(kind, ModelportError) and kind.__module__ == domain.__name__
}
OPENAI_PATHS = ("/v1", "/v3", "/api/v1")
NEBIUS_PATH = "/v0"
PAGE_PATH = "/console"


def make(kind: type[ModelportError]) -> ModelportError:
    if kind in (ValidationFailed, AdmissionFailed):
        return kind(["the <weights> are missing"])
    if "param" in inspect.signature(kind).parameters:
        return kind("the <thing> went wrong", param="thing")
    return kind("the <thing> went wrong")


class Body(BaseModel):
    n: int


def add_routes(app: FastAPI, prefix: str) -> None:
    @app.get(f"{prefix}/raise/{{name}}")
    def raise_domain_error(name: str) -> None:
        raise make(ERRORS[name])

    @app.post(f"{prefix}/body")
    def validated(body: Body) -> Body:
        return body

    @app.get(f"{prefix}/crash")
    def crash() -> None:
        raise RuntimeError("the secret is hunter2")

    @app.get(f"{prefix}/private")
    def private() -> None:
        raise SignInRequired


@pytest.fixture(scope="module")
def client() -> TestClient:
    app = FastAPI()
    for prefix in (NEBIUS_PATH, *OPENAI_PATHS, PAGE_PATH, "/health"):
        add_routes(app, prefix)

    @app.get("/health")
    def health() -> None:
        raise make(ERRORS["EngineOverloaded"])

    errors.install(app, fallback=PAGES)
    return TestClient(app, raise_server_exceptions=False, follow_redirects=False)


def test_every_domain_error_has_its_openai_type_pinned() -> None:
    assert set(ERRORS) == set(OPENAI_TYPES)


def _openai_error(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return dict(body["error"])


@pytest.mark.parametrize("name", sorted(OPENAI_TYPES))
def test_every_dialect_renders_every_domain_error(client: TestClient, name: str) -> None:
    error = make(ERRORS[name])
    expected = {"message": error.message, "type": OPENAI_TYPES[name], "param": error.param, "code": error.code}
    retry_after = None if error.retry_after is None else str(error.retry_after)
    for prefix in OPENAI_PATHS:
        resp = client.get(f"{prefix}/raise/{name}")
        assert _openai_error(resp, error.status_code) == expected, prefix
        assert resp.headers.get("retry-after") == retry_after
        assert resp.headers.get("www-authenticate") == ("Bearer" if error.status_code == 401 else None)
    assert stream_error(error) == {"error": expected}

    nebius = client.get(f"{NEBIUS_PATH}/raise/{name}")
    assert (nebius.status_code, nebius.json()) == (error.status_code, {"detail": error.message})
    assert nebius.headers.get("retry-after") == retry_after

    page = client.get(f"{PAGE_PATH}/raise/{name}")
    assert page.status_code == error.status_code and page.headers["content-type"].startswith("text/html")
    assert f'<p class="error" role="alert">{html.escape(error.message)}</p>' in page.text
    assert page.headers.get("retry-after") == retry_after


def test_request_validation_in_each_dialect(client: TestClient) -> None:
    for prefix in OPENAI_PATHS:
        err = _openai_error(client.post(f"{prefix}/body", json={"n": "x"}), 422)
        assert err["type"] == "invalid_request_error" and err["code"] == "invalid_request" and err["param"] == "n"
        assert err["message"].startswith("n: Input should be a valid integer")
        assert _openai_error(client.post(f"{prefix}/body", json=[1]), 422)["message"] == (
            "the request body must be a JSON object"
        )
    nebius = client.post(f"{NEBIUS_PATH}/body", json={"n": "x"})
    assert nebius.status_code == 422
    assert [(d["loc"], d["type"]) for d in nebius.json()["detail"]] == [(["body", "n"], "int_parsing")]
    page = client.post(f"{PAGE_PATH}/body", json={"n": "x"})
    assert page.status_code == 400 and "n: Input should be a valid integer" in page.text


def test_http_errors_in_each_dialect(client: TestClient) -> None:
    for prefix in OPENAI_PATHS:
        missing = _openai_error(client.get(f"{prefix}/nothing-here"), 404)
        assert missing == {
            "message": f"route not found: GET {prefix}/nothing-here",
            "type": "not_found_error",
            "param": None,
            "code": "not_found",
        }
        wrong = _openai_error(client.delete(f"{prefix}/crash"), 405)
        assert (wrong["type"], wrong["code"]) == ("invalid_request_error", "method_not_allowed")
    assert client.get(f"{NEBIUS_PATH}/nothing-here").json() == {"detail": "Not Found"}
    page = client.get(f"{PAGE_PATH}/nothing-here")
    assert page.status_code == 404 and "page not found" in page.text


def test_unexpected_failures_say_nothing_of_their_cause(client: TestClient) -> None:
    for prefix in OPENAI_PATHS:
        err = _openai_error(client.get(f"{prefix}/crash"), 500)
        assert (err["type"], err["code"]) == ("server_error", "internal_error") and "hunter2" not in err["message"]
    assert client.get(f"{NEBIUS_PATH}/crash").json() == {"detail": "internal server error"}
    page = client.get(f"{PAGE_PATH}/crash")
    assert page.status_code == 500 and "hunter2" not in page.text and "see the server log" in page.text


def test_a_page_without_a_session_redirects_to_sign_in(client: TestClient) -> None:
    resp = client.get(f"{PAGE_PATH}/private?tab=2")
    assert resp.status_code == 303 and resp.headers["location"] == "/signin?next=/console/private%3Ftab%3D2"


def test_health_answers_in_the_api_envelope_and_anything_unclaimed_is_a_page(client: TestClient) -> None:
    assert _openai_error(client.get("/health"), 503)["code"] == "engine_overloaded"
    for path in ("/health/crash", "/v1", "/healthz"):
        assert client.get(path).headers["content-type"].startswith("text/html"), path


def test_domain_errors_live_in_errors_py() -> None:
    """Every subclass of a domain error is defined in ``modelport/errors.py``, where the tree is drawn."""
    src = Path(modelport.__file__).parent
    elsewhere = []
    for path in sorted(src.rglob("*.py")):
        if path == src / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(_base_name(b) in ERRORS for b in node.bases):
                elsewhere.append(f"{path.relative_to(src)}: {node.name}")
    assert not elsewhere, elsewhere


def _base_name(base: ast.expr) -> str:
    return base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
