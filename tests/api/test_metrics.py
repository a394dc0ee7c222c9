"""``GET /metrics``: read with prometheus_client's own parser, its counters match the requests made.

One server (the fake engine, a real loopback socket) serves a tiny Llama and a tiny sentence embedder;
each test reads the metrics before and after what it does, so the tests do not depend on one another.
Who may scrape is tested on small apps of their own (a TestClient's client is not on loopback).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelport.app import create_app
from modelport.settings import Settings
from tests.api.conftest import minilm_files
from tests.conftest import database, make_settings
from tests.integration.helpers import upload
from tests.support.fakehub import FakeHub
from tests.support.inproc import serve_in_thread
from tests.support.tinymodels import files_of

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LLAMA, EMBEDDER = "acme/tiny", "acme/embedder"


@dataclass
class Server:
    url: str
    app: FastAPI
    admin: str  # an administrator's key
    user: str  # acme's key: its models are LLAMA and EMBEDDER

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.user}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub, tiny_llama: Path) -> Iterator[Server]:
    """Two uploads that complete and one that fails (a repository with no model in it)."""
    tmp = tmp_path_factory.mktemp("metrics")
    with database(tmp) as url:
        # The fake engine, in an engine process, 20 ms per token: streams last long enough to scrape during.
        settings = make_settings(tmp, url, hub.url, engine="fake", engine_fake_token_delay_s=0.02)
        app = create_app(settings, run_workers=False, supervise=False)
        services = app.state.services
        services.prepare()
        admin = services.accounts.create_key("ops", admin=True)
        user = services.accounts.create_key("acme")
        who = services.accounts.authenticate(user)
        hub.add("acme/metrics-llama", files_of(tiny_llama))
        hub.add("acme/metrics-embedder", minilm_files())
        hub.add("acme/metrics-junk", {"README.md": b"no model here"})
        assert upload(services, who, "tiny", "acme/metrics-llama").job.status == "Complete"
        assert upload(services, who, "embedder", "acme/metrics-embedder").job.status == "Complete"
        assert upload(services, who, "junk", "acme/metrics-junk").job.status == "Failed"
        with serve_in_thread(app) as base:
            yield Server(base, app, admin, user)


def scrape(url: str, headers: dict[str, str] | None = None) -> Samples:
    resp = httpx.get(f"{url}/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    return parse(resp.text)


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` that has ``labels`` (and any others)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def requests(samples: Samples, route: str, status: int, method: str = "POST") -> float:
    return value(samples, "modelport_http_requests_total", route=route, method=method, status=str(status))


def streamed_usage(client: httpx.Client, url: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, int]:
    """Streams ``body`` to its end and returns the usage of the last chunk (``include_usage``)."""
    usage: dict[str, int] = {}
    with client.stream("POST", url, json=body, headers=headers) as resp:
        assert resp.status_code == 200
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                usage = json.loads(line[6:]).get("usage") or usage
    return usage


@pytest.mark.db_agnostic
def test_counters_match_the_requests_made(server: Server) -> None:
    before = scrape(server.url)
    usages: list[dict[str, int]] = []
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 5}
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        for _ in range(3):
            usages.append(client.post("/v1/chat/completions", json=chat).raise_for_status().json()["usage"])
        stream = chat | {"stream": True, "stream_options": {"include_usage": True}}
        usages.append(streamed_usage(client, "/v1/chat/completions", stream, server.headers))
        for _ in range(2):
            body = {"model": "tiny", "prompt": "a b c d", "max_tokens": 4}
            usages.append(client.post("/v1/completions", json=body).raise_for_status().json()["usage"])
        embedded = client.post("/v1/embeddings", json={"model": "embedder", "input": ["a b", "c"]})
        embedding_tokens = embedded.raise_for_status().json()["usage"]["prompt_tokens"]
        assert client.post("/v1/chat/completions", json=chat, headers={"Authorization": ""}).status_code == 401
        assert client.get("/v1/jobs/job-nothere").status_code == 404
    after = scrape(server.url)

    def moved(route: str, status: int, method: str = "POST") -> float:
        return requests(after, route, status, method) - requests(before, route, status, method)

    assert moved("/v1/chat/completions", 200) == 4  # the stream once, with the status it started with
    assert moved("/v1/chat/completions", 401) == 1
    assert moved("/v1/completions", 200) == 2
    assert moved("/v1/embeddings", 200) == 1
    assert moved("/v1/jobs/{job_id}", 404, "GET") == 1  # the template, never the id
    assert moved("/metrics", 200, "GET") == 1  # the first scrape; this one is counted once it has ended
    assert not any(
        n == "modelport_http_requests_total" and ("route", "/v1/jobs/job-nothere") in labels for n, labels in after
    )

    sequences, generated = len(usages), sum(u["completion_tokens"] for u in usages)
    assert delta(before, after, "modelport_prompt_tokens_total", model=LLAMA) == sum(u["prompt_tokens"] for u in usages)
    assert delta(before, after, "modelport_generation_tokens_total", model=LLAMA) == generated
    assert delta(before, after, "modelport_time_to_first_token_seconds_count", model=LLAMA) == sequences
    assert delta(before, after, "modelport_inter_token_latency_seconds_count", model=LLAMA) == generated - sequences
    ok_text = {"model": LLAMA, "kind": "text", "outcome": "ok"}
    assert delta(before, after, "modelport_inference_requests_total", **ok_text) == sequences
    assert delta(before, after, "modelport_prompt_tokens_total", model=EMBEDDER) == embedding_tokens > 0
    ok_embedding = {"model": EMBEDDER, "kind": "embedding", "outcome": "ok"}
    assert delta(before, after, "modelport_inference_requests_total", **ok_embedding) == 1
    # Every TTFT fell in some bucket: the +Inf bucket is the count.
    assert value(after, "modelport_time_to_first_token_seconds_bucket", model=LLAMA, le="+Inf") == value(
        after, "modelport_time_to_first_token_seconds_count", model=LLAMA
    )
    # Asked of the engine process itself, over its socket.
    assert value(after, "modelport_worker_running_sequences", worker="worker-0", engine="fake") == 0


@pytest.mark.db_agnostic
def test_a_stream_is_counted_when_it_ends(server: Server) -> None:
    before = scrape(server.url)
    body = {"model": "tiny", "prompt": "a b c", "max_tokens": 30, "stream": True}  # 20 ms per token: 0.6 s
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", f"{server.url}/v1/completions", json=body, headers=server.headers) as resp,
    ):
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ")
        during = scrape(server.url)
        assert requests(during, "/v1/completions", 200) == requests(before, "/v1/completions", 200)
        assert all(line == "" or line.startswith("data: ") for line in lines)
    after = scrape(server.url)
    assert requests(after, "/v1/completions", 200) == requests(before, "/v1/completions", 200) + 1
    seconds = delta(
        before, after, "modelport_http_request_duration_seconds_sum", route="/v1/completions", method="POST"
    )
    assert seconds >= 0.5  # to the stream's last byte, not to its first
    assert delta(before, after, "modelport_inter_token_latency_seconds_count", model=LLAMA) == 29
    # The gaps are the engine's 20 ms, not a clock reading: all of them fall in the buckets up to 0.25 s.
    assert delta(before, after, "modelport_inter_token_latency_seconds_bucket", model=LLAMA, le="0.25") == 29


def test_jobs_by_state_and_stage_durations(server: Server) -> None:
    samples = scrape(server.url)
    jobs = {
        state: value(samples, "modelport_jobs", type="model_upload", state=state) for state in ("Queued", "Running")
    }
    assert jobs == {"Queued": 0, "Running": 0}
    assert value(samples, "modelport_jobs", type="model_upload", state="Complete") == 2
    assert value(samples, "modelport_jobs", type="model_upload", state="Failed") == 1
    assert value(samples, "modelport_jobs", type="adapter_upload", state="Complete") == 0
    stages = "modelport_job_stage_duration_seconds_count"
    assert value(samples, stages, stage="validating", outcome="ok") == 2
    assert total(samples, stages, outcome="failed") == 1  # the junk upload's last stage


# --- who may scrape ---------------------------------------------------------------------------------
@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings.model_copy(update={"engine": "fake"}), run_workers=False, supervise=False)


@pytest.mark.db_agnostic
def test_a_remote_scraper_needs_an_administrators_key(app: FastAPI) -> None:
    with TestClient(app) as client:  # its client is "testclient": not loopback
        accounts = app.state.services.accounts
        admin, user = accounts.create_key("ops", admin=True), accounts.create_key("acme")
        anonymous = client.get("/metrics")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert anonymous.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/metrics", headers={"Authorization": "Bearer mp-wrong"}).status_code == 401
        refused = client.get("/metrics", headers={"Authorization": f"Bearer {user}"})
        assert refused.status_code == 403 and "administrator" in refused.json()["error"]["message"]
        allowed = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert allowed.status_code == 200 and allowed.headers["content-type"].startswith("text/plain")
        samples = parse(allowed.text)
    assert requests(samples, "/metrics", 401, "GET") == 2
    assert requests(samples, "/metrics", 403, "GET") == 1


@pytest.mark.db_agnostic
def test_loopback_scrapes_without_a_key_by_default(app: FastAPI) -> None:
    with serve_in_thread(app) as url:
        resp = httpx.get(f"{url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")


@pytest.mark.db_agnostic
def test_key_mode_asks_loopback_too(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics_access": "key"}), run_workers=False, supervise=False)
    with serve_in_thread(app) as url:
        admin = app.state.services.accounts.create_key("ops", admin=True)
        assert httpx.get(f"{url}/metrics").status_code == 401
        assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {admin}"}).status_code == 200


@pytest.mark.db_agnostic
def test_open_mode_asks_no_one(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics_access": "open"}), run_workers=False, supervise=False)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 200


@pytest.mark.db_agnostic
def test_each_app_counts_in_its_own_registry(settings: Settings) -> None:
    one, two = (
        create_app(settings.model_copy(update={"metrics_access": "open"}), run_workers=False, supervise=False)
        for _ in range(2)
    )
    with TestClient(one) as first, TestClient(two) as second:
        first.get("/health")
        samples = parse(second.get("/metrics").text)
    assert requests(samples, "/health", 200, "GET") == 0
