"""Issue 16: a tenant's chat template or prompt cannot freeze, exhaust or starve the server.

A live ``modelport serve`` holds two tenants. ``devuser`` owns ``bomb``, a tiny Llama whose chat
template renders "Hello" (so it passes admission) but spins or allocates when a message starts with
``SPIN:``, ``GROW:``, ``PAD:`` or ``DOUBLE:``, and ``minilm``, a sentence embedder; ``other`` owns
``longctx``, a tiny Llama with a 131,072-token context and a plain template. Every attack runs inside a
``Watch``, which times ``GET /v3/whoami`` every 50 ms and follows the server's memory (sampled RSS and
the kernel's high-water mark) and its template workers'; each test states what it allows.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from modelport.chat_template import ChatTemplateError, TemplateBudgetError, render
from modelport.chat_template_workers import TemplateBudget, TemplateRenderer
from modelport.demo import CHAT_TEMPLATE
from modelport.errors import ContextLengthExceeded, InvalidRequest
from modelport.serving.limits import PromptLimits, utf8_size_over
from modelport.settings import Settings
from tests.api.conftest import minilm_files
from tests.conftest import database, open_services
from tests.e2e.conftest import Live, server_env
from tests.support.fakehub import FakeHub
from tests.support.procs import start_modelport
from tests.support.tinymodels import files_of, make_llama

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

KEY = "mp-security-key-0123456789abcdef0123"
TEMPLATE_SECONDS = 1.0
TEMPLATE_MEMORY = 64 * 2**20
WHOAMI_BOUND_S = 2.0  # the slowest whoami allowed while an attack runs (idle: a few ms)
SERVER_RSS_BUDGET = 100 * 2**20  # growth of the API process's memory an attack may cause
WORKER_RSS_BOUND = TEMPLATE_MEMORY + 48 * 2**20  # a template worker: the interpreter and Jinja, plus its budget

HOSTILE_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['content'].startswith('SPIN:') %}"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    "{% elif m['content'].startswith('GROW:') %}{{ 'x' * (m['content']|length * 100000000) }}"
    "{% elif m['content'].startswith('PAD:') %}{{ m['content']|center(1500000000) }}"
    "{% elif m['content'].startswith('DOUBLE:') %}{% set ns = namespace(s='x') %}"
    "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    "{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# --- the server ------------------------------------------------------------------------------------------
@dataclass
class Tenants:
    live: Live
    other_key: str

    def post(self, path: str, body: dict[str, Any], *, key: str | None = None, timeout: float = 60) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.live.key}"}
        return httpx.post(self.live.url + path, json=body, headers=headers, timeout=timeout)

    def chat(self, model: str, content: str, *, key: str | None = None) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
        return self.post("/v1/chat/completions", body, key=key)

    def other_chat(self, content: str = "hello world") -> httpx.Response:
        return self.chat("other/longctx", content, key=self.other_key)


def hostile_llama(path: Path) -> Path:
    make_llama(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": HOSTILE_TEMPLATE}))
    return path


def long_context_llama(path: Path) -> Path:
    make_llama(path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 131072}))
    return path


def upload(live: Live, hub: FakeHub, key: str, name: str, files: dict[str, bytes]) -> None:
    hub.add(f"sec/{name}", files)
    resp = httpx.post(
        f"{live.url}/v1/models",
        json={"model_name": name, "model_source": f"sec/{name}"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    job = resp.json()["data"]["job_id"]
    deadline = time.monotonic() + 300  # admission runs a forward pass in a child process
    while time.monotonic() < deadline:
        status = httpx.get(f"{live.url}/v1/jobs/{job}", headers={"Authorization": f"Bearer {key}"}).json()
        if status["status"] in ("Complete", "Failed"):
            assert status["status"] == "Complete", status
            return
        time.sleep(0.2)
    raise TimeoutError(name)


@pytest.fixture(scope="module")
def tenants(tmp_path_factory: pytest.TempPathFactory, hub: FakeHub) -> Iterator[Tenants]:
    tmp = tmp_path_factory.mktemp("security")
    with database(tmp) as db_url:
        env = server_env(
            tmp,
            db_url,
            hub,
            KEY,
            MODELPORT_CHAT_TEMPLATE_TIMEOUT_S=str(TEMPLATE_SECONDS),
            MODELPORT_CHAT_TEMPLATE_MEMORY_BYTES=str(TEMPLATE_MEMORY),
        )
        proc, url = start_modelport(env, tmp / "server.log")
        try:
            live = Live(url, KEY, proc, env)
            services = open_services(Settings(data_dir=tmp / "data", database_url=db_url))
            other_key = services.accounts.create_key("other")
            services.db.dispose()
            upload(live, hub, KEY, "bomb", files_of(hostile_llama(tmp / "bomb")))
            upload(live, hub, KEY, "minilm", minilm_files())
            upload(live, hub, other_key, "longctx", files_of(long_context_llama(tmp / "longctx")))
            found = Tenants(live, other_key)
            embedding = found.post("/v1/embeddings", {"model": "devuser/minilm", "input": "hello"})
            for warm in (found.chat("devuser/bomb", "hello"), found.other_chat(), embedding):  # loaded before measuring
                assert warm.status_code == 200, warm.text
            yield found
        finally:
            proc.stop()


# --- watching the server while an attack runs -------------------------------------------------------------
def _high_water_mark(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


@dataclass
class Watch:
    """``GET /v3/whoami`` every 50 ms and the server's memory every 10 ms, from other threads."""

    live: Live
    whoami_s: list[float] = field(default_factory=list)
    server_rss: list[int] = field(default_factory=list)
    worker_rss: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Watch:
        self.server = psutil.Process(self.live.proc.popen.pid)
        self.base_rss, self.base_hwm = self.server.memory_info().rss, _high_water_mark(self.server.pid)
        self._threads = [threading.Thread(target=self._whoami), threading.Thread(target=self._memory)]
        for thread in self._threads:
            thread.start()
        time.sleep(0.1)  # a few calls before the attack starts
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.1)
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.hwm_growth = _high_water_mark(self.server.pid) - self.base_hwm

    def _whoami(self) -> None:
        headers = {"Authorization": f"Bearer {self.live.key}"}
        with httpx.Client(base_url=self.live.url, headers=headers, timeout=120) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                status = client.get("/v3/whoami").status_code
                self.whoami_s.append(time.perf_counter() - started)
                if status != 200:
                    self.errors.append(f"whoami answered {status}")
                self._stop.wait(0.05)

    def _memory(self) -> None:
        while not self._stop.is_set():
            try:
                self.server_rss.append(self.server.memory_info().rss)
                workers = [p for p in self.server.children(recursive=True) if "chat_template" in " ".join(p.cmdline())]
                self.worker_rss += [p.memory_info().rss for p in workers]
            except psutil.NoSuchProcess:  # a worker that just ended
                pass
            self._stop.wait(0.01)

    @property
    def worst_whoami_s(self) -> float:
        return max(self.whoami_s)

    @property
    def rss_growth(self) -> int:
        return max(max(self.server_rss) - self.base_rss, self.hwm_growth)

    def check(self, what: str, *, rss_budget: int = SERVER_RSS_BUDGET) -> None:
        mib = 2**20
        print(
            f"\n{what}: whoami worst {self.worst_whoami_s * 1000:.0f} ms over {len(self.whoami_s)} calls; server RSS "
            f"{self.base_rss // mib} MiB, grew {self.rss_growth // mib} MiB; largest template worker "
            f"{max(self.worker_rss, default=0) // mib} MiB"
        )
        assert not self.errors, self.errors
        assert len(self.whoami_s) >= 3
        assert self.worst_whoami_s < WHOAMI_BOUND_S
        assert self.rss_growth < rss_budget
        assert max(self.worker_rss, default=0) < WORKER_RSS_BOUND


def timed(call: Callable[[], httpx.Response]) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    resp = call()
    return resp, time.perf_counter() - started


def assert_error(resp: httpx.Response, status: int, code: str, param: str | None = None) -> None:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


# --- finding 1: a chat template as a CPU or memory bomb -----------------------------------------------------
def test_a_spinning_template_fails_its_requests_while_other_tenants_are_served(tenants: Tenants) -> None:
    with Watch(tenants.live) as watch, ThreadPoolExecutor(2) as pool:
        bombs = [pool.submit(timed, lambda: tenants.chat("devuser/bomb", "SPIN: forever")) for _ in range(2)]
        time.sleep(0.2)  # both bombs hold or wait for template workers now
        others = [timed(tenants.other_chat) for _ in range(3)]
        answers = [bomb.result() for bomb in bombs]
    for resp, seconds in answers:
        assert_error(resp, 400, "chat_template_budget_exceeded", "messages")
        assert "CPU time" in resp.json()["error"]["message"]
        assert seconds < 4 * (2 * TEMPLATE_SECONDS + 1)  # its own turn, then the budget and the grace
    for resp, seconds in others:
        assert resp.status_code == 200, resp.text
        assert seconds < WHOAMI_BOUND_S  # another tenant's chat never waits behind devuser's templates
    watch.check(f"2 spinning templates ({max(s for _, s in answers):.2f} s)")
    assert tenants.chat("devuser/bomb", "hello").status_code == 200  # the model still chats


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("GROW: the sandbox refuses 'x' * 5.5e9 before building it", "would build"),
        ("PAD: center(1.5e9) allocates in C, past the worker's memory limit", "memory"),
        ("DOUBLE: a string doubled 40 times, one allocation at a time", "memory"),
    ],
)
def test_a_memory_bomb_fails_its_request_without_growing_the_server(
    tenants: Tenants, content: str, reason: str
) -> None:
    with Watch(tenants.live) as watch:
        resp, seconds = timed(lambda: tenants.chat("devuser/bomb", content))
        other, _ = timed(tenants.other_chat)
    assert_error(resp, 400, "chat_template_budget_exceeded", "messages")
    assert reason in resp.json()["error"]["message"]
    assert seconds < 2 * TEMPLATE_SECONDS + 1
    assert other.status_code == 200, other.text
    watch.check(f"{content.split(':')[0]} ({seconds:.2f} s)")
    assert tenants.chat("devuser/bomb", "hello").status_code == 200


# --- finding 2: huge prompts tokenized on the event loop -----------------------------------------------------
def test_a_prompt_too_long_for_its_model_is_refused_before_tokenizing(tenants: Tenants) -> None:
    huge = "hello world " * 1_000_000  # 12 MB: under the body cap, 3,000 times this model's 4 KiB of text
    with Watch(tenants.live) as watch:
        completion, completion_s = timed(
            lambda: tenants.post("/v1/completions", {"model": "devuser/bomb", "prompt": huge, "max_tokens": 1})
        )
        chat, chat_s = timed(lambda: tenants.chat("devuser/bomb", huge))
        embed, embed_s = timed(lambda: tenants.post("/v1/embeddings", {"model": "devuser/minilm", "input": huge}))
    assert_error(completion, 400, "context_length_exceeded", "prompt")
    assert "bytes" in completion.json()["error"]["message"]
    assert_error(chat, 400, "context_length_exceeded", "messages")
    assert_error(embed, 400, "context_length_exceeded", "input")  # over MODELPORT_MAX_PROMPT_BYTES
    assert max(completion_s, chat_s, embed_s) < 3
    watch.check(f"12 MB prompts (completion {completion_s:.2f} s, chat {chat_s:.2f} s, embeddings {embed_s:.2f} s)")


def test_a_50_mb_prompt_is_refused_at_once(tenants: Tenants) -> None:
    body = {"model": "devuser/bomb", "prompt": "x" * 50_000_000, "max_tokens": 1}
    with Watch(tenants.live) as watch:
        started = time.perf_counter()
        try:
            resp: httpx.Response | None = tenants.post("/v1/completions", body)
        except httpx.TransportError:  # answered and closed while the body was still being sent
            resp = None
        seconds = time.perf_counter() - started
    if resp is not None:  # the body cap (413) or the prompt cap (400)
        assert resp.status_code in (400, 413), resp.text
        assert resp.json()["error"]["code"] in ("context_length_exceeded", "request_too_large")
    assert seconds < 5
    watch.check(f"a 50 MB prompt ({seconds:.2f} s)")


def test_long_prompts_that_may_fit_are_tokenized_off_the_event_loop_one_at_a_time(tenants: Tenants) -> None:
    """Tokenizing takes about 750 bytes of memory per token: three 166,000-token prompts at once would
    hold some 375 MB, one at a time about 125 MB."""
    body = {"model": "other/longctx", "prompt": "hello world " * 83_000, "max_tokens": 1}  # 1 MB, within its cap
    with Watch(tenants.live) as watch, ThreadPoolExecutor(3) as pool:
        sent = [pool.submit(timed, lambda: tenants.post("/v1/completions", body, key=tenants.other_key)) for _ in "abc"]
        answers = [s.result() for s in sent]
    for resp, _ in answers:
        assert_error(resp, 400, "context_length_exceeded")  # 166,000 tokens do not fit 131,072
    watch.check(f"three 1 MB prompts tokenized ({max(s for _, s in answers):.2f} s)", rss_budget=200 * 2**20)


def test_embedding_inputs_are_cut_before_tokenizing(tenants: Tenants) -> None:
    long_input = "the capital of france is paris " * 10_000  # 320 KB; the model keeps 256 tokens of it
    with Watch(tenants.live) as watch:
        whole, seconds = timed(lambda: tenants.post("/v1/embeddings", {"model": "devuser/minilm", "input": long_input}))
        head = tenants.post("/v1/embeddings", {"model": "devuser/minilm", "input": long_input[:4000]})
    assert whole.status_code == 200, whole.text
    assert whole.json()["data"][0]["embedding"] == pytest.approx(head.json()["data"][0]["embedding"], abs=1e-5)
    watch.check(f"a 320 KB embedding input ({seconds:.2f} s)")


# --- low: seeds, token ids and request shapes ----------------------------------------------------------------
def test_out_of_range_seeds_token_ids_and_request_shapes_are_400s(tenants: Tenants) -> None:
    completion = {"model": "devuser/bomb", "prompt": "hello", "max_tokens": 1}
    chat = {"model": "devuser/bomb", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}
    cases: list[tuple[str, dict[str, Any], str, str]] = [
        ("/v1/completions", completion | {"seed": 2**64}, "invalid_request", "seed"),
        ("/v1/chat/completions", chat | {"seed": -(2**63) - 1}, "invalid_request", "seed"),
        ("/v1/completions", completion | {"prompt": [5, 10**6]}, "invalid_request", "prompt"),
        ("/v1/completions", completion | {"prompt": [-1]}, "invalid_request", "prompt"),
        ("/v1/completions", completion | {"prompt": [5] * 200}, "context_length_exceeded", "prompt"),
        ("/v1/completions", completion | {"stop": ["x" * 257]}, "invalid_request", "stop"),
        (
            "/v1/completions",
            completion | {"logit_bias": {str(i): 1 for i in range(1025)}},
            "invalid_request",
            "logit_bias",
        ),
        ("/v1/completions", completion | {"n": 17}, "invalid_request", "n"),
        (
            "/v1/chat/completions",
            chat | {"messages": [{"role": "user", "content": "a"}] * 2049},
            "invalid_request",
            "messages",
        ),
        ("/v1/embeddings", {"model": "devuser/minilm", "input": [[101, 10**6]]}, "invalid_request", "input"),
        ("/v1/embeddings", {"model": "devuser/minilm", "input": ["a"] * 2049}, "invalid_request", "input"),
    ]
    with Watch(tenants.live) as watch:
        for path, body, code, param in cases:
            assert_error(tenants.post(path, body), 400, code, param)
        seeded = [tenants.post("/v1/completions", completion | {"seed": 2**63 - 1, "n": 2}) for _ in range(2)]
    assert [r.status_code for r in seeded] == [200, 200]
    assert seeded[0].json()["choices"] == seeded[1].json()["choices"]  # the largest seed still reproduces
    watch.check("request-shape refusals")


# --- the renderer itself -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def renderer() -> Iterator[TemplateRenderer]:
    found = TemplateRenderer(TemplateBudget(seconds=0.5, memory_bytes=64 * 2**20, workers=2))
    yield found
    found.close()


MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def test_the_budget_costs_a_fraction_of_a_millisecond_per_render(renderer: TemplateRenderer) -> None:
    rounds = 300
    assert renderer.render(CHAT_TEMPLATE, MESSAGES) == render(CHAT_TEMPLATE, MESSAGES)  # both compiled and cached
    started = time.perf_counter()
    for _ in range(rounds):
        render(CHAT_TEMPLATE, MESSAGES)
    in_process = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        renderer.render(CHAT_TEMPLATE, MESSAGES)
    in_worker = (time.perf_counter() - started) / rounds
    print(f"\nrender: {in_process * 1e6:.0f} us in process, {in_worker * 1e6:.0f} us in a worker under the budget")
    assert in_worker < 0.005


def test_a_worker_that_stops_answering_is_replaced(renderer: TemplateRenderer) -> None:
    """The parent's wall-clock deadline holds even when the worker's own CPU alarm cannot fire."""
    renderer.render(CHAT_TEMPLATE, MESSAGES)
    workers = [p for p in psutil.Process().children() if "chat_template" in " ".join(p.cmdline())]
    for worker in workers:
        os.kill(worker.pid, signal.SIGSTOP)
    started = time.perf_counter()
    with pytest.raises(TemplateBudgetError, match="did not finish"):
        renderer.render(CHAT_TEMPLATE, MESSAGES)
    assert time.perf_counter() - started < 2 * 0.5 + 1 + 0.5
    for worker in workers:
        if worker.is_running():
            os.kill(worker.pid, signal.SIGCONT)
    assert renderer.render(CHAT_TEMPLATE, MESSAGES).startswith("<|system|>")


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ raise_exception('roles must alternate') }}", "roles must alternate"),
        ("{% for %}", "failed to compile"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
        ("{{ ().__class__.__mro__ }}", "unsafe"),
        ("{{ 10 ** 100000000 }}", "bits"),
        ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "more than 4194304 characters"),
        ("{{ '%999999999d'|format(1) }}", "memory"),
        ("{{ 'x'|center(1500000000) }}", "memory"),  # Jinja folds constants: compiling is the tenant's work too
    ],
)
def test_template_faults_are_reported_with_their_reason(renderer: TemplateRenderer, template: str, error: str) -> None:
    with pytest.raises(ChatTemplateError, match=error):
        renderer.render(template, MESSAGES)
    assert renderer.render(CHAT_TEMPLATE, MESSAGES).startswith("<|system|>")


# --- the prompt limits themselves ----------------------------------------------------------------------------
def test_prompt_bytes_are_counted_without_encoding_when_the_length_tells() -> None:
    limits = PromptLimits(max_bytes=1000, bytes_per_token=4)
    assert limits.cap(100) == 400 and limits.cap(10_000) == 1000
    assert utf8_size_over("a" * 400, 400) is None and utf8_size_over("a" * 401, 400) == 401
    assert utf8_size_over("é" * 200, 400) is None and utf8_size_over("é" * 201, 400) == 402  # 2 bytes each
    with pytest.raises(ContextLengthExceeded, match="402 bytes"):
        limits.check_text("é" * 201, 100, "prompt")
    with pytest.raises(ContextLengthExceeded, match="MODELPORT_MAX_PROMPT_BYTES"):
        limits.check_text("a" * 1001, 10_000, "prompt")
    limits.check_text("a" * 400, 100, "prompt")


def test_token_ids_are_checked_against_the_vocabulary_and_the_context() -> None:
    limits = PromptLimits()
    assert limits.check_ids([0, 5, 9], vocab=10, param="prompt") == [0, 5, 9]
    for bad in ([10], [-1], [3, 2**70]):
        with pytest.raises(InvalidRequest, match="outside the vocabulary") as raised:
            limits.check_ids(bad, vocab=10, param="prompt")
        assert raised.value.param == "prompt"
    with pytest.raises(ContextLengthExceeded):
        limits.check_ids([1] * 11, vocab=10, param="prompt", context=10)
