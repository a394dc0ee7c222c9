"""Issue 16: no tenant can freeze, exhaust or starve the others, and deleted secrets leave the disk.

One test per finding of the attack run, through the real app over HTTP (``TestClient``), real jobs
from the fake hub, and the database of the run (SQLite or PostgreSQL) unless a test says otherwise.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import IntegrityError

from modelport.app import create_app
from modelport.endpoints.hardware import GIB, Gpu, Inventory
from modelport.settings import Settings
from modelport.storage.db.engine import MIGRATIONS
from modelport.storage.db.tables import Account, Model, Upload
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of

KIB, MIB = 2**10, 2**20


@pytest.fixture
def repo(hub: FakeHub, tiny_llama: Path) -> str:
    hub.add("sec/tiny", files_of(tiny_llama))
    return "sec/tiny"


def app_with(settings: Settings, **overrides: Any) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=overrides), run_workers=False, supervise=False))


def key(client: TestClient, account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app.state.services.accounts.create_key(account)}"}  # type: ignore[attr-defined]


def error(resp: Any, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def reserve(client: TestClient, who: dict[str, str], size: int, name: str = "m.tar") -> Any:
    return client.post("/api/v1/uploads", json={"filename": name, "bytes": size}, headers=who)


def send_whole(client: TestClient, who: dict[str, str], data: bytes) -> Any:
    return client.post("/v0/models/upload", files={"file": ("m.tar", io.BytesIO(data))}, headers=who)


def finish_resumable(client: TestClient, who: dict[str, str], data: bytes) -> str:
    upload = reserve(client, who, len(data)).json()
    assert upload["parts"] == 1, upload
    sha = hashlib.sha256(data).hexdigest()
    put = client.put(f"/api/v1/uploads/{upload['id']}/parts/1", content=data, headers=who | {"X-Part-SHA256": sha})
    assert put.status_code == 200, put.text
    done = client.post(f"/api/v1/uploads/{upload['id']}/complete", headers=who)
    assert done.status_code == 200 and done.json()["status"] == "complete", done.text
    return str(upload["id"])


def upload_rows(client: TestClient, account: str) -> list[tuple[str, int]]:
    with client.app.state.services.db.read() as s:  # type: ignore[attr-defined]
        account_id = s.scalar(select(Account.id).where(Account.name == account))
        return [(u.status, u.size) for u in s.scalars(select(Upload).where(Upload.account_id == account_id))]


# --- storage: uploads in every form count against the quota ------------------------------------------


def test_upload_reservations_and_bytes_count_against_the_storage_quota(settings: Settings) -> None:
    with app_with(settings, quota_stored_bytes=1000 * KIB) as c:
        alice, bob = key(c, "alice"), key(c, "bob")
        # The attack: a 200 GiB reservation on a quota of about 1 MB.
        message = error(reserve(c, alice, 200 * 2**30), 429, "quota_exceeded")
        assert "storage quota" in message and "MODELPORT_QUOTA_STORED_BYTES" in message
        assert "retry-after" not in reserve(c, alice, 200 * 2**30).headers  # waiting does not help
        # An upload in progress counts its declared size before a single byte has arrived.
        first = reserve(c, alice, 600 * KIB)
        assert first.status_code == 200, first.text
        assert "storage quota" in error(reserve(c, alice, 600 * KIB), 429, "quota_exceeded")
        # A whole (multipart) upload declares nothing: it is cut off as its bytes pass the room left.
        cut = send_whole(c, alice, b"x" * (500 * KIB))
        assert cut.status_code == 429 and "storage quota" in cut.json()["detail"], cut.text
        assert upload_rows(c, "alice") == [("receiving", 600 * KIB)]  # the cut-off one left no row
        assert send_whole(c, alice, b"y" * (300 * KIB)).status_code == 200  # fits: 900 KiB of 1000
        error(reserve(c, alice, 200 * KIB), 429, "quota_exceeded")  # completed uploads count too
        assert reserve(c, bob, 600 * KIB).status_code == 200  # per account
        # Deleting an upload gives its room back.
        assert c.delete(f"/api/v1/uploads/{first.json()['id']}", headers=alice).status_code == 204
        assert reserve(c, alice, 600 * KIB).status_code == 200


def test_open_uploads_are_capped_per_account(settings: Settings) -> None:
    with app_with(settings, quota_open_uploads=3) as c:
        alice, bob = key(c, "alice"), key(c, "bob")
        opened = [reserve(c, alice, 10) for _ in range(3)]
        assert [r.status_code for r in opened] == [200] * 3
        message = error(reserve(c, alice, 10), 429, "quota_exceeded")
        assert "3 uploads still receiving" in message and "limit is 3" in message and "DELETE" in message
        refused = send_whole(c, alice, b"z" * 100)  # whole uploads are open uploads while they arrive
        assert refused.status_code == 429 and "still receiving" in refused.json()["detail"]
        assert reserve(c, bob, 10).status_code == 200  # per account
        # Finishing or deleting one frees a slot; finished uploads are bounded by the storage quota.
        assert c.delete(f"/api/v1/uploads/{opened[0].json()['id']}", headers=alice).status_code == 204
        finish_resumable(c, alice, b"0123456789")
        assert reserve(c, alice, 10).status_code == 200


def test_a_model_made_from_an_upload_is_not_counted_twice(settings: Settings, tiny_llama: Path) -> None:
    archive = archive_bytes(files_of(tiny_llama), "tar")
    model_bytes = sum(len(b) for b in files_of(tiny_llama).values())
    quota = len(archive) + 4 * KIB  # room for the archive *or* the model, not for both side by side
    with app_with(settings, quota_stored_bytes=quota) as c:
        alice = key(c, "alice")
        file_id = finish_resumable(c, alice, archive)
        made = c.post("/v1/models", json={"model_name": "kept", "model_source": file_id}, headers=alice)
        assert made.status_code == 200, made.text
        run_all_jobs(c.app.state.services)  # type: ignore[attr-defined]
        job = c.get(f"/v1/jobs/{made.json()['data']['job_id']}", headers=alice).json()
        assert job["status"] == "Complete", job  # the upload's bytes became the model's, not an addition
        # The API user kept the upload: it counts once, through the model.
        room = quota - model_bytes
        error(reserve(c, alice, room + 1), 429, "quota_exceeded")
        assert reserve(c, alice, room).status_code == 200


# --- endpoint hardware: a share per account, refusals that name only one's own ---------------------


@pytest.fixture
def tenants(settings: Settings, hub: FakeHub, tiny_llama: Path) -> Iterator[tuple[TestClient, list[dict[str, str]]]]:
    """alice, bob and carol, each with a ready model ``tiny``, on a host with an 8 GiB endpoint pool."""
    hub.add("sec/ep", files_of(tiny_llama))
    with app_with(settings, endpoint_memory_bytes=8 * GIB, quota_endpoint_share=0.5) as c:
        who = [key(c, name) for name in ("alice", "bob", "carol")]
        for headers in who:
            resp = c.post("/v1/models", json={"model_name": "tiny", "model_source": "sec/ep"}, headers=headers)
            assert resp.status_code == 200, resp.text
        run_all_jobs(c.app.state.services)  # type: ignore[attr-defined]
        yield c, who


def test_one_account_cannot_reserve_past_its_share_and_refusals_name_only_its_own(
    tenants: tuple[TestClient, list[dict[str, str]]],
) -> None:
    c, (alice, bob, carol) = tenants

    def post(who: dict[str, str], hardware: str) -> Any:
        return c.post("/v1/endpoints", json={"model": "tiny", "hardware": hardware}, headers=who)

    first = post(alice, "1x_cpu_4gb")
    assert first.status_code == 200, first.text  # half of the 8 GiB pool: alice's whole share
    message = error(post(alice, "1x_cpu_2gb"), 429, "quota_exceeded")
    assert "MODELPORT_QUOTA_ENDPOINT_SHARE" in message and first.json()["name"] in message
    error(post(alice, "1x_cpu_8gb"), 429, "quota_exceeded")  # more than any share: never the whole host
    scale = {"autoscaling": {"min_replicas": 2, "max_replicas": 2}}
    error(c.patch(f"/v1/endpoints/{first.json()['id']}", json=scale, headers=alice), 429, "quota_exceeded")
    assert c.get(f"/v1/endpoints/{first.json()['id']}", headers=alice).json()["autoscaling"]["min_replicas"] == 1
    rows = c.get("/v1/hardware", params={"model": "tiny"}, headers=alice).json()["data"]
    assert {h["availability"]["status"] for h in rows} == {"unavailable"}  # the hardware API says so too
    # Another tenant still gets hardware.
    theirs = post(bob, "1x_cpu_2gb")
    assert theirs.status_code == 200, theirs.text

    assert c.delete(f"/v1/endpoints/{first.json()['id']}", headers=alice).status_code == 204
    mine = post(alice, "1x_cpu_2gb")
    assert mine.status_code == 200, mine.text
    assert post(carol, "1x_cpu_4gb").status_code == 200  # the pool is now full: 2 + 2 + 4 GiB
    # Within her share but out of hardware: alice hears of her own endpoint, and of others only as others.
    message = error(post(alice, "1x_cpu_2gb"), 400, "hardware_unavailable")
    assert mine.json()["name"] in message and "other accounts' endpoints" in message
    for leak in (theirs.json()["name"], "bob", "carol"):
        assert leak not in message


@pytest.mark.db_agnostic
def test_a_share_is_a_fraction_of_the_host_but_at_least_one_configuration() -> None:
    now = datetime.now(UTC)
    gpus = lambda n: tuple(Gpu(i, "h100", 80, "sxm") for i in range(n))  # noqa: E731
    assert Inventory(gpus(8), 64, 0, now).account_cap(0.5) == 4
    assert Inventory(gpus(2), 64, 0, now).account_cap(0.25) == 1  # one GPU is the least anyone gets
    assert Inventory(gpus(1), 64, 0, now).account_cap(0.5) == 1  # one GPU cannot be split
    assert Inventory((), 4, 8 * GIB, now).account_cap(0.5) == 4 * GIB
    assert Inventory((), 4, 2 * GIB, now).account_cap(0.1) == 2 * GIB  # the smallest configuration
    assert Inventory(gpus(8), 64, 0, now).account_cap(1.0) == 8  # a single-tenant server


# --- SSRF: malformed IPv6 literals are a clear 400, never a 500 ------------------------------------


@pytest.mark.parametrize(
    "source",
    ["https://[::1/m.tar.gz", "https://[zz::]/m.tar.gz", "https://[::1]x/m.tar", "https://s3.example:abc/m.tar"],
)
def test_malformed_source_urls_are_a_clear_400(settings: Settings, source: str) -> None:
    with app_with(settings) as c:
        alice = key(c, "alice")
        body = {"model_name": "m", "model_source": source}
        assert "malformed" in error(c.post("/v1/models", json=body, headers=alice), 400, "invalid_source")
        preflight = c.post("/api/v1/models/preflight", json={"model_name": "m", "model_source": source}, headers=alice)
        assert preflight.status_code == 400, preflight.text
        nebius = c.post("/v0/models", json={"name": "m", "source": source}, headers=alice)
        assert nebius.status_code == 400 and "malformed" in nebius.text
        for form in ("[::ffff:0:7f00:1]", "[::ffff:0:a9fe:a9fe]"):  # IPv4-translated: refused like the rest
            body = {"model_name": "m", "model_source": f"https://{form}/m.tar.gz"}
            assert "written as IPv6" in error(c.post("/v1/models", json=body, headers=alice), 400, "invalid_source")


# --- secrets: gone from the SQLite files once deleted -----------------------------------------------


@pytest.mark.db_agnostic  # SQLite's own files; PostgreSQL reclaims dead rows with VACUUM (engine.py)
def test_deleted_job_secrets_are_in_no_sqlite_file(tmp_path: Path, hub: FakeHub, tiny_llama: Path) -> None:
    db = tmp_path / "secrets.db"
    token, signature = "hf_SecretTokenLeftInTheWal0123456789", "SigLeftInTheWal0123456789abcdef"
    hub.add("sec/private", files_of(tiny_llama), token=token)
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{db}",
        hf_endpoint=hub.url,
        fetch_allow_http=True,
        fetch_allow="127.0.0.1,localhost",
        workers=0,
        quota_active_jobs=0,
    )
    host = hub.url.replace("127.0.0.1", "localhost")  # an archive URL, not the hub's own address
    missing = f"{host}/no/such/archive.tar.gz?X-Amz-Expires=86400&X-Amz-Signature={signature}"
    with app_with(settings) as c:
        alice = key(c, "alice")
        jobs = []
        for body in (
            {"model_name": "private", "model_source": "sec/private", "hf_token": token},  # completes
            {"model_name": "gone", "model_source": missing},  # fails: 404
        ):
            resp = c.post("/v1/models", json=body, headers=alice)
            assert resp.status_code == 200, resp.text
            jobs.append(resp.json()["data"]["job_id"])
        with c.app.state.services.db.read() as s:  # type: ignore[attr-defined]
            held = s.scalar(text("SELECT count(*) FROM job_secrets"))
            # Set on every connection, whatever this SQLite build's default (Debian's is on, others' off).
            assert s.scalar(text("PRAGMA secure_delete")) == 1
        assert held == 2 and token.encode() in raw_bytes(db)  # the scan can see a live secret
        run_all_jobs(c.app.state.services)  # type: ignore[attr-defined]
        statuses = [c.get(f"/v1/jobs/{j}", headers=alice).json()["status"] for j in jobs]
        assert statuses == ["Complete", "Failed"]
        files = raw_bytes(db)
    assert {p.name for p in tmp_path.glob("secrets.db*")} >= {"secrets.db"}
    for secret in (token, signature):
        assert secret.encode() not in files, f"{secret} is still in the SQLite files"


def raw_bytes(db: Path) -> bytes:
    """The database, its write-ahead log and its shared-memory index, as they are on disk."""
    return b"".join(p.read_bytes() for p in sorted(db.parent.glob(db.name + "*")))


# --- names: one name under case folding and normalisation -------------------------------------------


def test_model_names_differing_only_by_case_or_form_are_one_name(settings: Settings, repo: str) -> None:
    with app_with(settings) as c:
        alice, bob = key(c, "alice"), key(c, "bob")
        submit = lambda who, name: c.post("/v1/models", json={"model_name": name, "model_source": repo}, headers=who)  # noqa: E731
        assert submit(alice, "MyModel").status_code == 200
        for spelling in ("mymodel", "alice/MYMODEL", "\uff4d\uff59\uff4d\uff4f\uff44\uff45\uff4c"):  # fullwidth
            message = error(submit(alice, spelling), 409, "model_name_taken")
            assert "alice/MyModel" in message  # the holder's spelling
        preflight = c.post("/api/v1/models/preflight", json={"model_name": "MYmodel"}, headers=alice)
        assert preflight.status_code == 409, preflight.text
        assert submit(bob, "mymodel").status_code == 200  # another namespace
        run_all_jobs(c.app.state.services)  # type: ignore[attr-defined]
        assert c.get("/v1/models/alice/MyModel", headers=alice).status_code == 200  # the user's spelling
        # The database itself refuses a second spelling (two submissions racing past the check).
        with pytest.raises(IntegrityError), c.app.state.services.db.session() as s:  # type: ignore[attr-defined]
            account_id = s.scalar(select(Account.id).where(Account.name == "alice"))
            race = {"kind": "model", "status": "uploading", "source_kind": "huggingface", "source": repo}
            s.add(Model(id="model-race", account_id=account_id, name="alice/MYMODEL", **race))


def test_the_name_key_migration_keeps_existing_case_duplicates_usable(db_url: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0004")
        at = "2025-01-01 00:00:0{}+00:00".format
        conn.execute(
            text("INSERT INTO accounts (id, name, is_admin, created_at) VALUES ('acct-1', 'alice', false, :t)"),
            {"t": at(0)},
        )
        for i, name in enumerate(("alice/MyModel", "alice/mymodel")):
            conn.execute(
                text(
                    "INSERT INTO models (id, account_id, name, kind, status, source_kind, source, total_bytes, "
                    "created_at) VALUES (:id, 'acct-1', :name, 'model', 'ready', 'huggingface', 'o/r', 0, :t)"
                ),
                {"id": f"model-{i}", "name": name, "t": at(i + 1)},
            )
        command.upgrade(cfg, "head")
        keys = dict(conn.execute(text("SELECT name, name_key FROM models")).all())
        count = conn.execute(select(func.count()).select_from(Model)).scalar()
    engine.dispose()
    assert count == 2  # both kept, under their own names
    assert keys == {"alice/MyModel": "alice/mymodel", "alice/mymodel": "alice/mymodel#model-1"}
