"""The Ray group: a three-node Ray cluster on this machine, S3 (moto) as the blob store the nodes fetch
models from, and ``modelport serve`` processes with ``MODELPORT_RAY_ADDRESS`` pointed at the cluster.

Run by ``make test-ray`` inside a loopback-only network namespace (see ``tests/support/raycluster.py``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import openai
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
    settings = {
        "MODELPORT_RAY_ADDRESS": cluster.address,
        "MODELPORT_RAY_CALL_TIMEOUT_S": "5",
        "MODELPORT_CONTROLLER_LEASE_S": "4",
        "MODELPORT_BLOB_URL": f"s3://{store.bucket}/{tmp_path.name}",
        "MODELPORT_S3_ENDPOINT_URL": store.url,
        "MODELPORT_QUOTA_ENDPOINT_SHARE": "1.0",
        # Serverless models stay on the server unless a test asks for engines on the cluster: theirs would
        # take cores the endpoint tests' replicas need.
        "MODELPORT_RAY_SERVERLESS_REPLICAS": "0",
        **S3_KEYS,
    }
    return server_env(tmp_path, db_url, hub, KEY, **{**settings, **extra})


@pytest.fixture
def ray_live(tmp_path: Path, db_url: str, hub: FakeHub, cluster: RayCluster, store: Store) -> Iterator[Live]:
    """A server whose endpoints run on the cluster; replicas it leaves behind are stopped after the test."""
    env = ray_env(tmp_path, db_url, hub, cluster, store)
    proc, url = start_modelport(env, tmp_path / "server.log")
    yield Live(url, KEY, proc, env)
    proc.stop()
    if cluster.workers:
        cluster.kill_actors()


MESSAGES = [{"role": "user", "content": "the capital of france is"}]


def chat(live: Live, model: str) -> str:
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=5, temperature=0)  # type: ignore[arg-type]
    return resp.choices[0].message.content or ""


@dataclass
class Asking:
    """A client that keeps asking ``model`` through a fault, retrying a 503 as a client would: how many
    answers were ``expected``, and every other failure."""

    live: Live
    model: str
    expected: str
    served: int = 0
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _ask(self) -> None:
        while not self._stop.is_set():
            try:
                if chat(self.live, self.model) == self.expected:
                    self.served += 1
            except openai.APIStatusError as e:
                if e.status_code != 503:  # engine_restarted, no ready replica: retry
                    self.failures.append(f"{e.status_code} {e.message}")
            time.sleep(0.05)

    def __enter__(self) -> Asking:
        self._thread = threading.Thread(target=self._ask)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
