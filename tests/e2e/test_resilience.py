"""A live server under hostile clients and failing dependencies: slow-drip clients, a database whose
connections are killed, a blob store that goes away. Each gives clear errors, and the server recovers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.e2e.conftest import server_env
from tests.support.fakehub import FakeHub
from tests.support.procs import Proc, start_modelport
from tests.support.tcpproxy import TcpProxy
from tests.support.tinymodels import files_of

pytestmark = pytest.mark.e2e
KEY = "mp-resilience-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def impatient_server(tmp_path: Path, db_url: str, hub: FakeHub) -> Iterator[str]:
    env = server_env(
        tmp_path,
        db_url,
        hub,
        KEY,
        MODELPORT_HTTP_HEADER_TIMEOUT_S="2",
        MODELPORT_UPLOAD_STALL_TIMEOUT_S="2",
        MODELPORT_WORKERS="0",
        # One account opens 20 dripping uploads here: the deadline, not the open-uploads cap, is under test.
        MODELPORT_QUOTA_OPEN_UPLOADS="0",
    )
    proc, url = start_modelport(env, tmp_path / "server.log")
    yield url
    proc.stop()


def _open(port: int, first: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(first)
    return sock


def _drip(socks: list[socket.socket], piece: bytes, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(piece)


def _answer(sock: socket.socket) -> bytes:
    """What the server sent before closing: b"" for a plain close."""
    sock.settimeout(10)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


@pytest.mark.db_agnostic
def test_slow_drip_clients_cannot_exhaust_the_server(impatient_server: str) -> None:
    port = int(impatient_server.rsplit(":", 1)[1])
    # 300 clients that never finish their headers, 40 that drip a JSON body, 20 a multipart upload.
    headers = [_open(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n") for _ in range(300)]
    json_body = b"POST /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
    json_body += b"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
    bodies = [_open(port, json_body) for _ in range(40)]
    multipart = b"POST /v0/models/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
    multipart += b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n--b\r\n"
    multipart += b'Content-Disposition: form-data; name="file"; filename="m.tar"\r\n\r\n'  # then the file drips
    uploads = [_open(port, multipart) for _ in range(20)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_drip, args=(headers, b"X-Slow: 1\r\n", stop), daemon=True),
        threading.Thread(target=_drip, args=(bodies + uploads, b" ", stop), daemon=True),
    ]
    for t in threads:
        t.start()
    try:
        # Meanwhile everyone else is served at once.
        latencies = []
        with httpx.Client(base_url=impatient_server, headers=AUTH, timeout=10) as c:
            for _ in range(20):
                started = time.perf_counter()
                assert c.get("/v1/models").status_code == 200
                assert c.get("/health").status_code == 200
                latencies.append(time.perf_counter() - started)
        assert max(latencies) < 2.0, latencies
        # The slow ones are cut off by their deadlines, and their sockets closed.
        answers = [_answer(s) for s in headers[:20]]
        assert all(a == b"" for a in answers), answers[:3]
        for sock in bodies[:10] + uploads[:10]:
            status = _answer(sock).split(b"\r\n", 1)[0]
            assert b" 408 " in status, status
    finally:
        stop.set()
        for s in headers + bodies + uploads:
            s.close()
    with httpx.Client(base_url=impatient_server, headers=AUTH, timeout=10) as c:
        assert c.get("/v1/models").status_code == 200


def _kill_connections(db_url: str) -> int:
    """Terminate every other session on the test database, as a failover or a restart would."""
    url = make_url(db_url)
    dsn = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return len(rows)


def test_database_connection_drops_give_clear_errors_and_recover(
    tmp_path: Path, db_url: str, hub: FakeHub, tiny_llama: Path
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("connection drops are a client/server database failure; SQLite is a file in the process")
    env = server_env(tmp_path, db_url, hub, KEY)
    proc, url = start_modelport(env, tmp_path / "server.log")
    statuses: list[int] = []
    bodies: list[dict[str, Any]] = []
    try:
        hub.add("db/tiny", files_of(tiny_llama))
        with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
            job = c.post("/v1/models", json={"model_name": "during", "model_source": "db/tiny"}).json()["data"]
            killed = 0
            deadline = time.monotonic() + 4
            while time.monotonic() < deadline:
                killed += _kill_connections(db_url)
                for path in ("/v1/models", f"/v1/jobs/{job['job_id']}", "/v1/whoami"):
                    resp = c.get(path)
                    statuses.append(resp.status_code)
                    if resp.status_code != 200:
                        bodies.append(resp.json() | {"retry-after": resp.headers.get("retry-after")})
            assert killed > 0
            assert set(statuses) <= {200, 503}, statuses
            for body in bodies:  # never a 500 or a stack trace: a clear, retryable answer
                assert body["error"]["code"] == "database_unavailable" and body["retry-after"], body
            # Once the drops stop, everything works again and the job that ran through them ends.
            time.sleep(0.5)
            assert all(c.get("/v1/models").status_code == 200 for _ in range(5))
            deadline = time.monotonic() + 90
            while (state := c.get(f"/v1/jobs/{job['job_id']}").json())["status"] not in ("Complete", "Failed"):
                assert time.monotonic() < deadline, state
                time.sleep(0.3)
            assert state["status"] == "Complete" or state["error"]["code"] != "internal_error", state
            resp = c.post("/v1/models", json={"model_name": "after", "model_source": "db/tiny"})
            assert resp.status_code == 200
    finally:
        proc.stop()
    print(f"{len(statuses)} requests while connections were killed: {statuses.count(503)} answered 503")


@pytest.fixture
def s3_proxy(s3_server: str) -> Iterator[TcpProxy]:
    proxy = TcpProxy(int(s3_server.rsplit(":", 1)[1])).start()
    yield proxy
    proxy.cut()


@pytest.mark.db_agnostic
def test_blob_store_outage_gives_clear_errors_and_recovers(
    tmp_path: Path, db_url: str, hub: FakeHub, s3: Any, s3_proxy: TcpProxy, tiny_llama: Path
) -> None:
    s3.create_bucket(Bucket="outage")
    env = server_env(
        tmp_path,
        db_url,
        hub,
        KEY,
        MODELPORT_BLOB_URL="s3://outage/blobs",
        MODELPORT_S3_ENDPOINT_URL=s3_proxy.url,
        MODELPORT_S3_ACCESS_KEY_ID="testing",
        MODELPORT_S3_SECRET_ACCESS_KEY="testing",
    )
    proc: Proc
    proc, url = start_modelport(env, tmp_path / "server.log")
    hub.add("blob/tiny", files_of(tiny_llama))
    chat = {"model": "devuser/first", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    try:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as c:

            def upload(name: str) -> dict[str, Any]:
                job_id = c.post("/v1/models", json={"model_name": name, "model_source": "blob/tiny"}).json()["data"]
                deadline = time.monotonic() + 90
                while (job := c.get(f"/v1/jobs/{job_id['job_id']}").json())["status"] not in ("Complete", "Failed"):
                    assert time.monotonic() < deadline, job
                    time.sleep(0.2)
                return dict(job)

            assert upload("first")["status"] == "Complete"
            s3_proxy.cut()
            failed = upload("second")
            assert failed["status"] == "Failed" and failed["error"]["code"] == "blob_store_unavailable", failed
            assert "not answering" in failed["error"]["message"] and "testing" not in failed["error"]["message"]
            resp = c.post("/v1/chat/completions", json=chat)  # its weights are not cached yet: they are in S3
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "blob_store_unavailable", resp.text
            assert c.get("/v1/models").status_code == 200  # what needs no blob keeps working
            s3_proxy.start()
            resp = c.post("/v1/chat/completions", json=chat)
            assert resp.status_code == 200, resp.text
            assert upload("second")["status"] == "Complete"
    finally:
        proc.stop()
