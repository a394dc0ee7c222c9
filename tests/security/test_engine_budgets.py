"""Issue 16: no tenant can freeze, exhaust or starve the others through the engine.

One test per finding, each through the real parts: the app over HTTP with a model uploaded through
the hub, real adapters read by the engine, a real batch on a tiny Llama.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM

from modelport.app import create_app
from modelport.errors import EngineFailed, ValidationFailed
from modelport.ingest.safetensors_header import read_file_header
from modelport.ingest.validate import BaseModel, validate
from modelport.serving.engine import GenerationRequest, SamplingParams, TokenStep
from modelport.serving.engines.torch.lora import read_adapter
from modelport.serving.engines.torch.runner import BatchRunner, Sequence
from tests.conftest import database, make_settings
from tests.integration.helpers import run_all_jobs
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of, make_llama, make_lora
from tests.unit.test_validate import staged

pytestmark = pytest.mark.db_agnostic

MAX_MODEL_LEN = 32768
SEQUENCE_MEMORY = 64 * 2**20  # what the engine may give running sequences in these tests
DECLARED = 1 << 24  # the largest max_position_embeddings validation lets a config declare


@contextmanager
def peak_rss_growth() -> Iterator[list[int]]:
    """Samples this process's resident memory every 2 ms; yields [peak growth in bytes] (filled on exit)."""
    page = 4096
    result = [0]
    stop = threading.Event()

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page

    start = peak = rss()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield result
    finally:
        stop.set()
        sampler.join()
        result[0] = max(peak, rss()) - start


# --- finding 3: a tenant-declared context --------------------------------------------------------
@pytest.fixture(scope="module")
def huge_context(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[tuple[TestClient, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("huge-context")
    model = make_llama(tmp / "m", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | {"max_position_embeddings": DECLARED}))
    with database(tmp) as url:
        settings = make_settings(tmp, url, hub.url, engine_sequence_memory_bytes=SEQUENCE_MEMORY)
        assert settings.max_model_len == MAX_MODEL_LEN  # the default is what is tested
        app = create_app(settings, run_workers=False)
        with TestClient(app) as client:
            headers = {"Authorization": f"Bearer {app.state.services.accounts.create_key('mallory')}"}
            hub.add("mallory/long", files_of(model))
            resp = client.post(
                "/v1/models", json={"model_name": "long", "model_source": "mallory/long"}, headers=headers
            )
            assert resp.status_code == 200, resp.text
            run_all_jobs(app.state.services)
            resp, _ = complete(client, headers, 8)  # loads the tokenizer and the model: not what is measured
            assert resp.status_code == 200, resp.text
            yield client, headers


def complete(client: TestClient, headers: dict[str, str], n: int, **extra: object) -> tuple[httpx.Response, float]:
    prompt = [1] + [4 + i % 14 for i in range(n - 1)]
    started = time.perf_counter()
    body = {"model": "mallory/long", "prompt": prompt, "max_tokens": 2, "temperature": 0} | extra
    resp = client.post("/v1/completions", json=body, headers=headers)
    return resp, time.perf_counter() - started


def test_a_declared_context_is_capped_and_requests_are_priced_before_allocation(
    huge_context: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = huge_context
    # Beyond MODELPORT_MAX_MODEL_LEN (the model declares 2^24): refused at once, nothing allocated.
    with peak_rss_growth() as grew:
        resp, took = complete(client, headers, MAX_MODEL_LEN + 1000)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    assert f"maximum context length is {MAX_MODEL_LEN} tokens" in resp.json()["error"]["message"]
    assert took < 2 and grew[0] < 32 * 2**20, (took, grew[0])

    # Within the cap but more than one request's memory: the per-request estimate refuses it before
    # any allocation (a one-pass prefill of 16k tokens used to grow the process by 2.5 GiB, 24k by 5.6).
    with peak_rss_growth() as grew:
        resp, took = complete(client, headers, 20_000)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "context_length_exceeded" and "MODELPORT_ENGINE_SEQUENCE_MEMORY_BYTES" in error["message"]
    assert took < 2 and grew[0] < 32 * 2**20, (took, grew[0])

    # A long prompt that fits is served, prefilled in chunks, within the sequence budget: the old
    # one-pass prefill of 6,000 tokens grew the process by 345 MiB (N x N float mask and more).
    with peak_rss_growth() as grew:
        resp, took = complete(client, headers, 6_000)
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (6000, 2, 6002)
    assert grew[0] < SEQUENCE_MEMORY + 16 * 2**20, grew[0]


# --- finding 5: ReDoS through alpha_pattern ------------------------------------------------------
EVIL = {"(a+)+$": 16, "((a|aa)*)*x": 8, "(.*)*q_proj": 4}  # nested quantifiers: exponential backtracking


def test_a_catastrophic_alpha_pattern_is_refused_at_validation_and_at_load(tmp_path: Path) -> None:
    base = make_llama(tmp_path / "base")
    lora = make_lora(tmp_path / "lora", base)
    config = json.loads((lora / "adapter_config.json").read_text())
    (lora / "adapter_config.json").write_text(json.dumps(config | {"alpha_pattern": EVIL, "rank_pattern": EVIL}))
    header = read_file_header(str(base / "model.safetensors"), (base / "model.safetensors").stat().st_size)
    manifest = validate(staged(base), [], "model", None, None)

    started = time.perf_counter()
    with pytest.raises(ValidationFailed) as err:
        validate(staged(lora), [], "adapter", BaseModel("mallory/base", manifest, header.tensors), "mallory/base")
    assert time.perf_counter() - started < 1.0
    found = " ".join(err.value.problems)
    assert "alpha_pattern '(a+)+$': a quantifier after a group" in found and "rank_pattern" in found

    # An adapter stored before validation checked this: the engine refuses it, in bounded time (the
    # old loader ran the pattern against every module: 2.25 s for one 24-character name, doubling
    # with each character more).
    config["target_modules"] = ["q_proj", "v_proj"]
    for pattern in EVIL:
        (lora / "adapter_config.json").write_text(json.dumps(config | {"alpha_pattern": {pattern: 16}}))
        started = time.perf_counter()
        with pytest.raises(EngineFailed, match="alpha_pattern"):
            read_adapter("adapter-evil", lora)
        assert time.perf_counter() - started < 0.5


# --- low: a temperature that overflows -----------------------------------------------------------
def test_a_denormal_temperature_never_fails_the_batch_it_shares(tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(
        make_llama(tmp_path / "m", hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128), dtype=torch.float32
    )

    def run(*rows: tuple[list[int], float]) -> list[list[int | str]]:
        runner = BatchRunner(model, context_length=128, max_num_seqs=4, max_adapters=1, prefill_budget=64)
        outs: list[list[TokenStep | BaseException]] = []
        for i, (prompt, temperature) in enumerate(rows):
            params = SamplingParams(max_tokens=8, temperature=temperature, seed=7)
            outs.append([])
            request = GenerationRequest(f"r{i}", None, None, prompt, params, 128)  # type: ignore[arg-type]
            runner.submit(Sequence(request, outs[-1].append, None))
        while runner.step():
            pass
        return [[s.token_id if isinstance(s, TokenStep) else repr(s) for s in out] for out in outs]

    tenant_a, tenant_b = [1, 4, 5, 6], [1, 9, 10, 11, 12]
    tiny, normal = run((tenant_a, 1e-45), (tenant_b, 0.0))  # used to be NaN, then one error for both rows
    assert len(tiny) == len(normal) == 8 and all(isinstance(t, int) for t in tiny + normal)
    assert normal == run((tenant_b, 0.0))[0]  # exactly what tenant B gets alone
    assert tiny == run((tenant_a, 0.0))[0]  # a temperature that small is greedy
