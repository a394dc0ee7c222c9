"""The Ray group: a three-node Ray cluster on this machine, S3 (moto) as the blob store the nodes fetch
models from, and ``modelport serve`` processes with ``MODELPORT_RAY_ADDRESS`` pointed at the cluster.

Run by ``make test-ray`` inside a loopback-only network namespace (see ``tests/support/raycluster.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.e2e.conftest import Live, server_env
from tests.support.fakehub import FakeHub
from tests.support.procs import start_modelport, start_moto
from tests.support.raycluster import RayCluster

KEY = "mp-ray-bootstrap-key-0123456789abcdef"
S3_KEYS = {"MODELPORT_S3_ACCESS_KEY_ID": "testing", "MODELPORT_S3_SECRET_ACCESS_KEY": "testing"}

pytestmark = pytest.mark.e2e


@dataclass
class Store:
    url: str  # the S3 server
    bucket: str


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    proc, url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    s3: Any = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket="models")
    yield Store(url, "models")
    proc.stop()


@pytest.fixture(scope="session")
def cluster(store: Store) -> Iterator[RayCluster]:
    """A head (no CPUs for replicas) and two workers with 2 CPUs and 5 GiB each. The nodes have the
    store's credentials in their environment; the servers never send theirs."""
    cluster = RayCluster(env={**S3_KEYS, "OMP_NUM_THREADS": "1"})
    try:
        cluster.start_head()
        cluster.add_worker()
        cluster.add_worker()
        yield cluster
    finally:
        cluster.stop()


def ray_env(
    tmp_path: Path, db_url: str, hub: FakeHub, cluster: RayCluster, store: Store, **extra: str
) -> dict[str, str]:
    return server_env(
        tmp_path,
        db_url,
        hub,
        KEY,
        MODELPORT_RAY_ADDRESS=cluster.address,
        MODELPORT_RAY_CALL_TIMEOUT_S="5",
        MODELPORT_CONTROLLER_LEASE_S="4",
        MODELPORT_BLOB_URL=f"s3://{store.bucket}/{tmp_path.name}",
        MODELPORT_S3_ENDPOINT_URL=store.url,
        MODELPORT_QUOTA_ENDPOINT_SHARE="1.0",
        **S3_KEYS,
        **extra,
    )


@pytest.fixture
def ray_live(tmp_path: Path, db_url: str, hub: FakeHub, cluster: RayCluster, store: Store) -> Iterator[Live]:
    """A server whose endpoints run on the cluster; replicas it leaves behind are stopped after the test."""
    env = ray_env(tmp_path, db_url, hub, cluster, store)
    proc, url = start_modelport(env, tmp_path / "server.log")
    yield Live(url, KEY, proc, env)
    proc.stop()
    if cluster.workers:
        cluster.kill_actors()
