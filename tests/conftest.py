"""Shared fixtures. The database is SQLite unless MODELPORT_TEST_DATABASE=postgresql.

With PostgreSQL every test gets a database of its own (created and dropped here) on the server at
MODELPORT_TEST_PG_URL (default: 127.0.0.1:5432, user postgres, trust auth).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from sqlalchemy import create_engine, text

from modelport.accounts.service import Principal
from modelport.services import Services, build_services
from modelport.settings import Settings
from tests.support import togethervenvs
from tests.support.fakehub import FakeHub
from tests.support.procs import Proc, free_port, start_moto
from tests.support.tinymodels import make_llama, make_lora

PG_ADMIN_URL = os.environ.get("MODELPORT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
USE_PG = os.environ.get("MODELPORT_TEST_DATABASE", "sqlite") == "postgresql"


# The Ray group needs a network namespace of its own and runs as its own step (``make test-ray``).
collect_ignore = [] if os.environ.get("MODELPORT_TEST_RAY") else ["onray"]


def pytest_configure(config: pytest.Config) -> None:
    """One OpenMP thread per process, in this one and in every process the tests start (servers, their
    checkers and engines inherit it), unless the caller chose a number. The tests' models are tiny: a
    second thread gains nothing on them, and on a 2-core machine that runs the test process, a server,
    its checker and an engine at once, OpenMP threads that spin waiting for a core another process holds
    made forward passes many times slower (``test_batching.py``'s preemption test: 6 s with one thread,
    71 s with two, under the load of a whole run). Set before any test module imports torch."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # pytest-xdist's workers (``make test`` runs two) set COLUMNS=80; the CLI's piped output is checked at
    # the width a serial run gives it (its default for output that is not a terminal).
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("COLUMNS") == "80":
        del os.environ["COLUMNS"]
    # fp32 everywhere the tests do not say otherwise: the correctness tests compare the engine's greedy
    # tokens with plain transformers/PEFT token for token, and the engine's "auto" would pick bf16 on CPUs
    # with AMX or AVX512-BF16 (CI machines differ). bf16 has its own tolerance test (test_precision.py).
    os.environ.setdefault("MODELPORT_ENGINE_DTYPE", "float32")


def pytest_report_header() -> str:
    return f"modelport database under test: {'PostgreSQL at ' + PG_ADMIN_URL if USE_PG else 'SQLite'}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The PostgreSQL pass re-runs what can behave differently on another database.

    Unit tests never touch one, and tests marked ``db_agnostic`` check wire conformance or process
    supervision on top of the catalog: the SQLite pass covers them, which keeps ``make test`` short.
    Then, when live-server tests will run, the together clients' venvs start building in the background.
    """
    if USE_PG:
        skip = pytest.mark.skip(reason="database-independent: covered by the SQLite pass")
        for item in items:
            if item.get_closest_marker("db_agnostic") or "/tests/unit/" in str(item.path):
                item.add_marker(skip)
    if any("/tests/e2e/" in str(item.path) for item in items if not item.get_closest_marker("skip")):
        togethervenvs.prebuild()


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    with database(tmp_path) as url:
        yield url


@contextmanager
def database(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of the kind under test; dropped afterwards on PostgreSQL."""
    if not USE_PG:
        yield f"sqlite:///{tmp_path / 'modelport.db'}"
        return
    name = f"mp_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    server.start(free_port())
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc: Proc
    proc, url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield url
    proc.stop()


@pytest.fixture(scope="session")
def s3(s3_server: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"bucket-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def presign(s3: Any, bucket: str) -> Any:
    """Put bytes in S3 and return a real presigned GET URL for them."""

    def _presign(data: bytes, key: str = "model.tar.gz", expires: int = 6 * 3600) -> str:
        s3.put_object(Bucket=bucket, Key=key, Body=data)
        url: str = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires)
        return url

    return _presign


def make_settings(tmp_path: Path, db_url: str, hub_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "database_url": db_url,
        "hf_endpoint": hub_url,
        "fetch_allow_http": True,
        "fetch_allow": "localhost,127.0.0.1",  # the fake hub and the S3 server listen on loopback
        "workers": 0,
        "job_lease_s": 5.0,
        "job_poll_interval_s": 0.1,
        "blob_gc_grace_s": 0.0,
        "quota_active_jobs": 0,  # queue tests submit dozens of jobs at once; quota tests set their own
    }
    return Settings(**(values | overrides))


@pytest.fixture
def settings(tmp_path: Path, db_url: str, hub: FakeHub) -> Settings:
    return make_settings(tmp_path, db_url, hub.url)


def open_services(settings: Settings, **kwargs: Any) -> Services:
    """The ingest side of the platform (no engine), its database migrated; nothing started."""
    svc = build_services(settings, serving=False, **kwargs)
    svc.prepare()
    return svc


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = open_services(settings)
    yield svc
    svc.db.dispose()


def principal_for(services: Services, account: str) -> Principal:
    return services.accounts.authenticate(services.accounts.create_key(account))


@pytest.fixture
def alice(services: Services) -> Principal:
    return principal_for(services, "alice")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    return make_lora(tmp_path_factory.mktemp("adapters") / "tiny-lora", tiny_llama)
