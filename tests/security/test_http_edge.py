"""The HTTP edge: who may send a body and how large (decided before any byte of it is read), the console's
sign-in (no login CSRF, no API key in the cookie), and multipart bodies that must close.

The memory test drives a live ``modelport serve`` and reads its RSS from ``/proc`` while 400 MB bodies
arrive and another tenant's requests are timed; the rest use the app in process.
"""

from __future__ import annotations

import hashlib
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import event

from modelport.accounts.sessions import SECRET_FILE, SessionSigner
from modelport.api.gate import INFERENCE_ENDPOINTS, Caps, policy_of
from modelport.api.session import SESSION_COOKIE, csrf_token
from modelport.app import create_app
from modelport.errors import AuthenticationError
from modelport.settings import Settings
from modelport.storage.db.tables import Upload
from tests.api.test_tenancy import PUBLIC
from tests.api.test_together_api import assert_envelope
from tests.conftest import database
from tests.e2e.conftest import server_env
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.procs import Proc, start_modelport

KEY = "mp-http-edge-key-0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
MiB = 2**20
HUGE = 400 * MiB
# Routes that check their caller themselves, with a rule the gate does not know: a GET with no body, so
# the gate only caps it like a public route. /metrics: MODELPORT_METRICS_ACCESS (tests/api/test_metrics.py).
OWN_ACCESS_RULE = {("GET", "/metrics")}
# Together v2's transfer URLs: no key, their signature is the permission (``catalog/transfers.py``).
SIGNED = {
    ("PUT", "/v2/transfer/parts/{upload_id}/{part_number}"),
    ("GET", "/v2/transfer/files/{revision_id}/{path:path}"),
}
RSS_BUDGET = 64 * MiB  # growth allowed while a 400 MB body is refused (before: +1.2 GB)
WHOAMI_BOUND_S = 2.0  # another tenant's request while it happens (idle: a few ms)


# --- 1. bodies are capped by route, and the key is checked before any byte is read ----------------
def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def huge_json(size: int = HUGE) -> Iterator[bytes]:
    """A JSON body of ``size`` bytes, produced a chunk at a time: the test itself stays small."""
    chunk = b"a" * MiB
    yield b'{"model": "m", "prompt": "'
    for _ in range(size // MiB):
        yield chunk
    yield b'"}'


@dataclass
class Watch:
    """While a request runs: the server's peak RSS, and how long another tenant's /v3/whoami takes."""

    pid: int
    url: str
    peak: int = 0
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        while not self.stop.wait(0.01):
            self.peak = max(self.peak, rss(self.pid))

    def _whoami(self) -> None:
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as client:
            while not self.stop.is_set():
                started = time.monotonic()
                assert client.get("/v3/whoami").status_code == 200
                self.latencies.append(time.monotonic() - started)
                time.sleep(0.02)

    def __enter__(self) -> Watch:
        self.threads = [threading.Thread(target=t, daemon=True) for t in (self._sample, self._whoami)]
        for t in self.threads:
            t.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.1)
        self.stop.set()
        for t in self.threads:
            t.join(30)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[tuple[Proc, str]]:
    tmp = tmp_path_factory.mktemp("edge")
    with database(tmp) as url:
        env = server_env(tmp, url, hub, KEY, MODELPORT_ENGINE="fake", MODELPORT_WORKERS="0")
        proc, base = start_modelport(env, tmp / "server.log")
        try:
            yield proc, base
        finally:
            proc.stop()


def send_huge(url: str, headers: dict[str, str], declared: bool) -> tuple[int, float]:
    length = {"Content-Length": str(sum(len(c) for c in huge_json()))} if declared else {}
    started = time.monotonic()
    resp = httpx.post(
        f"{url}/v1/chat/completions",
        content=huge_json(),
        headers=headers | length | {"Content-Type": "application/json"},
        timeout=60,
    )
    return resp.status_code, time.monotonic() - started


@pytest.mark.e2e
@pytest.mark.db_agnostic
@pytest.mark.parametrize(
    ("who", "declared", "expected"),
    [
        ("anonymous", True, 401),
        ("anonymous", False, 401),
        ("wrong key", False, 401),
        ("valid key", False, 413),  # past the inference cap (16 MiB): cut off while streaming
    ],
)
def test_a_400_mb_body_is_refused_before_it_is_read(
    live: tuple[Proc, str], who: str, declared: bool, expected: int
) -> None:
    proc, url = live
    headers = {"anonymous": {}, "wrong key": {"Authorization": "Bearer mp-wrong"}, "valid key": AUTH}[who]
    for _ in range(20):  # warm: the first requests allocate what every later one reuses
        httpx.get(f"{url}/v3/whoami", headers=AUTH)
    before = rss(proc.popen.pid)
    with Watch(proc.popen.pid, url) as watch:
        status, took = send_huge(url, headers, declared)
    grew, slowest = watch.peak - before, max(watch.latencies)
    print(
        f"{who}, {'Content-Length' if declared else 'chunked'}: {status} in {took:.2f} s; RSS {before / MiB:.0f} MiB "
        f"+{grew / MiB:.1f} MiB; whoami x{len(watch.latencies)} max {slowest * 1000:.0f} ms"
    )
    assert status == expected
    assert took < 10, took
    assert grew < RSS_BUDGET, f"RSS grew by {grew / MiB:.0f} MiB"
    assert slowest < WHOAMI_BOUND_S, watch.latencies


@pytest.fixture
def small_caps(settings: Settings) -> Iterator[TestClient]:
    caps = {"max_body_bytes": 4096, "max_inference_body_bytes": 8192, "max_anonymous_body_bytes": 1024}
    app = create_app(settings.model_copy(update=caps), run_workers=False, supervise=False)
    with TestClient(app, follow_redirects=False) as client:
        client.headers.update(AUTH | {"Content-Type": "application/json"})
        app.state.services.accounts.create_key("edge", key=KEY)
        yield client


def test_an_over_cap_body_is_413_in_each_dialects_envelope(small_caps: TestClient) -> None:
    c = small_caps
    big = b'{"x": "' + b"a" * 10_000 + b'"}'
    for path in ("/v1/chat/completions", "/v1/models", "/v1/endpoints", "/api/v1/uploads", "/api/v1/keys"):
        error = assert_envelope(c.post(path, content=big), 413, "request_too_large")
        limit = "MODELPORT_MAX_INFERENCE_BODY_BYTES" if "completions" in path else "MODELPORT_MAX_BODY_BYTES"
        assert limit in error["message"], error
    nebius = c.post("/v0/models", content=big)
    assert nebius.status_code == 413 and "MODELPORT_MAX_BODY_BYTES" in nebius.json()["detail"]
    # Inference has room for long prompts: a body over the JSON cap but under its own is parsed.
    prompt = b'{"model": "nope", "prompt": "' + b"a" * 6000 + b'"}'
    assert c.post("/v1/completions", content=prompt).status_code == 404  # read, parsed, no such model
    # A console page answers with its HTML error page.
    c.cookies.set(SESSION_COOKIE, c.app.state.services.accounts.open_session(KEY))  # type: ignore[attr-defined]
    page = c.post(
        "/models/new", content=b"a=" + b"b" * 5000, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert page.status_code == 413 and "<html" in page.text.lower()


def test_anonymous_bodies_get_the_smallest_cap_and_no_key_means_no_read(small_caps: TestClient) -> None:
    c = small_caps
    form = {"api_key": KEY, "next": "/models", "pad": "x" * 2000}
    resp = c.post("/signin", data=form, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 413 and SESSION_COOKIE not in resp.cookies
    # A route that needs a key answers 401 for a body of any declared size: the key comes first.
    huge = {"Content-Length": str(HUGE), "Authorization": "Bearer mp-wrong"}
    assert_envelope(c.post("/v1/chat/completions", content=b"{}", headers=huge), 401, "invalid_api_key")


def test_a_streamed_body_is_cut_off_at_its_cap(settings: Settings) -> None:
    """No Content-Length: the gate counts bytes as they arrive and stops at the cap with 413."""
    app = create_app(settings.model_copy(update={"max_body_bytes": 64 * 1024}), run_workers=False, supervise=False)
    with TestClient(app):
        app.state.services.accounts.create_key("edge", key=KEY)
        with serve_in_thread(app) as url:
            headers = AUTH | {"Content-Type": "application/json"}
            resp = httpx.post(f"{url}/v1/models", content=huge_json(8 * MiB), headers=headers, timeout=30)
            error = assert_envelope(resp, 413, "request_too_large")
            assert "65536 bytes" in error["message"]
            resp = httpx.post(f"{url}/v0/models", content=huge_json(8 * MiB), headers=headers, timeout=30)
            assert resp.status_code == 413 and "MODELPORT_MAX_BODY_BYTES" in resp.json()["detail"]


def test_the_key_is_looked_up_once_per_request(small_caps: TestClient) -> None:
    engine = small_caps.app.state.services.db.engine  # type: ignore[attr-defined]
    lookups: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        # Reads only: the key's last-used date is written at most once a minute (the first request here).
        if "api_keys" in statement and statement.lstrip().upper().startswith("SELECT"):
            lookups.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert small_caps.get("/v3/whoami").status_code == 200
        assert small_caps.post("/v1/models", json={"model_name": "x", "model_source": "o/x"}).status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(lookups) == 2, lookups


def test_every_route_that_needs_a_caller_is_authenticated_by_the_gate(small_caps: TestClient) -> None:
    """The gate's policy is read from each route's dependencies: every route but the public ones needs
    a caller before its body is read, and the upload and inference caps apply to mounted routes."""
    caps = Caps(small_caps.app.state.services.settings)  # type: ignore[attr-defined]
    endpoints = set()
    for ctx in iter_route_contexts(small_caps.app.routes):  # type: ignore[attr-defined]
        if not isinstance(ctx.original_route, APIRoute):
            continue
        policy = policy_of(ctx.original_route, caps)
        public = all((m, ctx.path) in PUBLIC | OWN_ACCESS_RULE for m in ctx.methods or ())
        signed = all((m, ctx.path) in SIGNED for m in ctx.methods or ())
        assert (policy.authenticate is None) == (public or signed), (ctx.path, ctx.methods)
        if signed:  # a part's body has its own cap; a download sends none
            assert policy.cap == caps.uploads.get(ctx.endpoint, caps.anonymous), ctx.path
        else:
            assert policy.cap == caps.anonymous if public else policy.cap.bytes >= caps.json.bytes, ctx.path
        endpoints.add(ctx.endpoint)
    assert set(caps.uploads) | INFERENCE_ENDPOINTS <= endpoints


# --- 2. the console's sign-in: no login CSRF, no key in the cookie, revocation ends it -------------
@pytest.fixture
def console(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, run_workers=False, supervise=False)
    with TestClient(app, base_url="http://console.test", follow_redirects=False) as client:
        app.state.services.accounts.create_key("edge", key=KEY)
        yield client


def sign_in(client: TestClient, headers: dict[str, str]) -> Any:
    return client.post("/signin", data={"api_key": KEY, "next": "/keys"}, headers=headers)


def test_sign_in_from_another_site_is_refused(console: TestClient) -> None:
    foreign = [
        {"Origin": "https://evil.example"},
        {"Origin": "null"},  # a page that hides its address
        {"Referer": "https://evil.example/login-csrf.html"},
        {"Origin": "http://console.test.evil.example"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://console.test"},
    ]
    for headers in foreign:
        resp = sign_in(console, headers)
        assert resp.status_code == 403 and "another site" in resp.text, headers
        assert "set-cookie" not in resp.headers, headers
    for headers in ({"Origin": "http://console.test"}, {"Referer": "http://console.test/signin?next=/keys"}, {}):
        resp = sign_in(console, headers)
        assert resp.status_code == 303 and resp.headers["location"] == "/keys", headers


def test_the_cookie_holds_a_session_not_the_key_and_revoking_the_key_ends_it(console: TestClient) -> None:
    resp = sign_in(console, {"Origin": "http://console.test"})
    session = console.cookies[SESSION_COOKIE]
    cookie = resp.headers["set-cookie"]
    assert KEY not in cookie and hashlib.sha256(KEY.encode()).hexdigest() not in cookie
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "max-age=" in cookie.lower()
    assert console.get("/keys").status_code == 200
    assert console.get("/v1/models").status_code == 200  # the JSON API takes the session too
    # A forged or altered token is no session, and the raw key in the cookie is not one either.
    for bad in (session[:-2] + "xx", session.replace("s1.", "s2.", 1), KEY):
        console.cookies.clear()
        console.cookies.set(SESSION_COOKIE, bad)
        assert console.get("/keys").status_code == 303
    console.cookies.clear()
    console.cookies.set(SESSION_COOKIE, session)
    # The page's CSRF token is made from the session, and revoking the key (here, from the page) ends it.
    key_id = console.get("/api/v1/keys", headers={}).json()["data"][0]["id"]
    resp = console.post(f"/keys/{key_id}/revoke", data={"csrf_token": csrf_token(session)})
    assert resp.status_code == 303
    resp = console.get("/keys")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/signin")
    assert_envelope(console.get("/v1/models"), 401, "invalid_api_key")


def test_sessions_expire_and_the_secret_is_private(console: TestClient, settings: Settings) -> None:
    secret = settings.data_dir / SECRET_FILE
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    signer = SessionSigner.in_dir(settings.data_dir, ttl_s=60)  # the same secret, read back
    token = signer.issue("key-1", now=1000)
    assert signer.key_id(token, now=1059) == "key-1"
    with pytest.raises(AuthenticationError, match="expired"):
        signer.key_id(token, now=1061)
    with pytest.raises(AuthenticationError):
        SessionSigner(b"another secret of thirty-two bytes", ttl_s=60).key_id(token, now=1000)


# --- 3. a multipart body must close -----------------------------------------------------------------
def test_a_multipart_body_without_its_closing_boundary_is_400_and_stores_nothing(console: TestClient) -> None:
    app = console.app
    head = b'--b\r\nContent-Disposition: form-data; name="file"; filename="m.tar"\r\n\r\n'
    headers = AUTH | {"Content-Type": "multipart/form-data; boundary=b"}
    for body in (
        head + b"x" * 5000,  # cut off inside the file
        head + b"x" * 5000 + b"\r\n--b",  # the boundary, but not the closing one
        head + b"x" * 5000 + b"\r\n--b\r\n",  # another part begun, never finished
    ):
        resp = console.post("/v0/models/upload", content=body, headers=headers)
        assert resp.status_code == 400 and "closing boundary" in resp.json()["detail"], body[-20:]
    with app.state.services.db.session() as s:  # type: ignore[attr-defined]
        assert s.query(Upload).count() == 0
    uploads_dir: Path = app.state.services.settings.uploads_dir  # type: ignore[attr-defined]
    assert not uploads_dir.exists() or not any(p.is_file() for p in uploads_dir.rglob("*"))
    # The same body, closed, is stored.
    whole = console.post("/v0/models/upload", content=head + b"x" * 5000 + b"\r\n--b--\r\n", headers=headers)
    assert whole.status_code == 200 and whole.json()["bytes"] == 5000
