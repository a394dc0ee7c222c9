"""One contract for every blob store: the local disk and S3 (a real moto server, through boto3)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport.accounts.service import Principal
from modelport.errors import BlobUnavailable
from modelport.services import Services
from modelport.settings import Settings
from modelport.storage.blobs import BlobStore, LocalBlobStore, open_blob_store
from tests.conftest import make_settings, open_services, principal_for
from tests.integration.helpers import upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import archive_bytes, files_of


def s3_settings(tmp_path: Path, s3_server: str, bucket: str, **kw: Any) -> Settings:
    return Settings(
        data_dir=tmp_path,
        blob_url=f"s3://{bucket}/blobs",
        s3_endpoint_url=s3_server,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        **kw,
    )


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    settings = s3_settings(tmp_path, request.getfixturevalue("s3_server"), request.getfixturevalue("bucket"))
    return open_blob_store(settings)


def _staged(tmp_path: Path, data: bytes) -> tuple[Path, str]:
    p = tmp_path / f"staged-{os.urandom(4).hex()}"
    p.write_bytes(data)
    return p, hashlib.sha256(data).hexdigest()


def test_put_read_and_delete(store: BlobStore, tmp_path: Path) -> None:
    path, sha = _staged(tmp_path, b"0123456789" * 1000)
    assert not store.has(sha)
    store.put(path, sha)
    store.put(path, sha)  # idempotent
    assert store.has(sha)
    with store.open(sha) as f:
        assert f.read() == b"0123456789" * 1000
    assert store.read_range(sha, 5, 7) == b"5678901"
    assert [s for s, _ in store.iter_blobs()] == [sha]
    store.delete(sha)
    assert not store.has(sha) and list(store.iter_blobs()) == []


def test_names_that_are_not_hashes_are_refused(store: BlobStore, tmp_path: Path) -> None:
    path, _ = _staged(tmp_path, b"x")
    with pytest.raises(ValueError):
        store.put(path, "../../etc/passwd")


def test_putting_existing_content_refreshes_its_age(store: BlobStore, tmp_path: Path) -> None:
    path, sha = _staged(tmp_path, b"same content")
    store.put(path, sha)
    [(_, first)] = list(store.iter_blobs())
    time.sleep(1.1)
    store.put(path, sha)
    [(_, second)] = list(store.iter_blobs())
    assert second > first


def test_missing_blob_and_unreachable_store_raise_clear_errors(tmp_path: Path) -> None:
    local = LocalBlobStore(tmp_path / "b")
    with pytest.raises(BlobUnavailable, match="missing"):
        local.open("0" * 64)
    dead = open_blob_store(s3_settings(tmp_path, "http://127.0.0.1:9", "nobucket"))
    with pytest.raises(BlobUnavailable, match="not answering"):
        dead.has("0" * 64)


@pytest.fixture
def s3_services(tmp_path: Path, db_url: str, hub: FakeHub, s3_server: str, bucket: str) -> Iterator[Services]:
    base = make_settings(tmp_path, db_url, hub.url)
    settings = base.model_copy(
        update={
            "blob_url": f"s3://{bucket}/store",
            "s3_endpoint_url": s3_server,
            "s3_access_key_id": "testing",
            "s3_secret_access_key": "testing",
        }
    )
    svc = open_services(settings)
    yield svc
    svc.db.dispose()


def test_ingest_into_an_s3_blob_store(
    s3_services: Services, presign: Any, tiny_llama: Path, s3: Any, bucket: str
) -> None:
    who: Principal = principal_for(s3_services, "alice")
    view = upload(s3_services, who, "tiny", presign(archive_bytes(files_of(tiny_llama), "tar.gz"), "src.tgz"))
    assert view.job.status == "Complete", [u.message for u in view.updates]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="store/")["Contents"]}
    manifest = s3_services.catalog.get_model(who, "tiny").manifest
    assert manifest is not None
    assert keys == {f"store/sha256/{f.sha256}" for f in manifest.files}
