"""Secrets never reach the server's log (at debug level), its job records, its errors or its database.

A live server is driven through every path that handles a secret: a private Hugging Face repo with a
right and a wrong token, presigned URLs that work, that point at nothing, and that redirect to cloud
metadata, refused sources, wrong and revoked API keys, and a key created over the API. Then the whole
log, every job record and a dump of every table are searched for each secret's value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
from sqlalchemy import create_engine, inspect, text

from tests.e2e.conftest import Live
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of


def _signature(url: str) -> str:
    query = parse_qs(urlparse(url).query)
    return (query.get("X-Amz-Signature") or query["Signature"])[0]  # SigV4 or SigV2, as boto3 chose


def test_no_secret_reaches_logs_jobs_errors_or_tables(
    live: Live, hub: FakeHub, presign: Any, tiny_llama: Path, tmp_path: Path, db_url: str
) -> None:
    auth = {"Authorization": f"Bearer {live.key}"}
    hf_token, wrong_token = "hf_PrivateRepoToken0123456789", "hf_WrongToken9876543210abc"
    hub.add("corp/private", files_of(tiny_llama), token=hf_token)
    good_url = presign(archive_bytes(files_of(tiny_llama), "tar.gz"), key="good.tar.gz")
    missing_url = good_url.replace("good.tar.gz", "missing.tar.gz")  # signed for another key: 403
    metadata_url = hub.redirect("meta", "http://169.254.169.254/latest/meta-data/") + "?X-Amz-Signature=metasig123456"
    secrets = {
        "hf token": hf_token,
        "wrong hf token": wrong_token,
        "signature": _signature(good_url),
        "redirect signature": "metasig123456",
        "bootstrap key": live.key,
    }
    jobs = []
    with httpx.Client(base_url=live.url, headers=auth, timeout=30) as c:
        for name, source, token in (
            ("private-ok", "corp/private", hf_token),
            ("private-wrong", "corp/private", wrong_token),
            ("presigned-ok", good_url, None),
            ("presigned-missing", missing_url, None),
            ("presigned-metadata", metadata_url, None),
        ):
            body = {"model_name": name, "model_source": source} | ({"hf_token": token} if token else {})
            resp = c.post("/v1/models", json=body)
            assert resp.status_code == 200, resp.text
            jobs.append(resp.json()["data"]["job_id"])
        finished = [live.wait_job(j) for j in jobs]
        assert [j["status"] for j in finished] == ["Complete", "Failed", "Complete", "Failed", "Failed"]
        assert finished[4]["error"]["code"] == "fetch_refused"

        refused = [
            c.post("/v1/models", json={"model_name": "x", "model_source": "ftp://h/x?X-Amz-Signature=metasig123456"}),
            c.post("/v1/models", json={"model_name": "../x", "model_source": good_url}),
            c.post(
                "/v1/models",
                json={
                    "model_name": "y",
                    "model_source": "gopher" + good_url.partition(":")[1] + good_url.partition(":")[2],
                },
            ),
        ]
        created = c.post("/api/v1/keys", json={}).json()
        secrets["created key"] = created["key"]
        assert all(k.get("key") is None for k in c.get("/api/v1/keys").json()["data"])  # shown once only
        c.delete(f"/api/v1/keys/{created['id']}")
        for key in (created["key"], "mp-guessed-key-0123456789abcdefgh"):
            refused.append(c.get("/v1/models", headers={"Authorization": f"Bearer {key}"}))
        secrets["guessed key"] = "mp-guessed-key-0123456789abcdefgh"
        records = [c.get("/v1/jobs").text, *(c.get(f"/v1/jobs/{j}").text for j in jobs)]
        records += [c.get(f"/v1/jobs/{j}/events").text for j in jobs[:1]]
        records += [r.text for r in refused]
        assert all(r.status_code in (400, 401, 422) for r in refused), [r.status_code for r in refused]

    live.proc.stop()
    log = (tmp_path / "server.log").read_text()
    assert "HTTP Request" in log and "<redacted>" in log  # the fetches were logged, with their secrets cut
    engine = create_engine(db_url)
    with engine.connect() as conn:
        tables = "".join(
            str(conn.execute(text(f'SELECT * FROM "{t}"')).fetchall()) for t in inspect(conn).get_table_names()
        )
    engine.dispose()
    for what, value in secrets.items():
        for place, haystack in (("server log", log), ("job records and errors", "".join(records)), ("tables", tables)):
            assert value not in haystack, f"the {what} leaked into the {place}"
