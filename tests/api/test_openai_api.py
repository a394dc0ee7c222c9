"""The OpenAI inference dialect, through the official ``openai`` SDK against the real app and engine."""

from __future__ import annotations

import math
from pathlib import Path

import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.api.conftest import Served, minilm_files

# Inference over the catalog: the database's part (names, accounts) is covered on both databases elsewhere.
pytestmark = pytest.mark.db_agnostic


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=served.key, http_client=served.client, max_retries=0)


def test_models_list_shows_models_and_adapters(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"acme/chat", "acme/plain", "acme/lora-a", "acme/lora-b", "acme/minilm"} <= ids


def test_chat_completion(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model="acme/chat", messages=[{"role": "user", "content": "hello world"}], max_tokens=5, temperature=0
    )
    choice = resp.choices[0]
    assert resp.object == "chat.completion" and resp.model == "acme/chat"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert 1 <= resp.usage.completion_tokens <= 5


def test_chat_output_matches_plain_transformers(client: openai.OpenAI, served: Served, tmp_path: Path) -> None:
    """Greedy chat through the API equals ``generate`` on the stored files, tokens and text."""
    app = served.client.app
    model = app.state.services.catalog.get_model(app.state.services.accounts.authenticate(served.key), "chat")  # type: ignore[attr-defined]
    folder = app.state.services.settings.model_cache_dir / model.revision_id  # type: ignore[attr-defined,operator]
    client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a"}], max_tokens=1)
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    messages = [{"role": "user", "content": "the capital of france is"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = hf.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=3)
    expected = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    resp = client.chat.completions.create(model="acme/chat", messages=messages, max_tokens=8, temperature=0)
    # Word-level tokens: the reply continues the prompt, so it may begin with the separating space.
    assert resp.choices[0].message.content.split() == expected.split()  # type: ignore[union-attr]
    assert resp.usage is not None and resp.usage.completion_tokens == out.shape[1] - ids["input_ids"].shape[1]


def test_streaming_chat_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "hello"}]
    whole = client.chat.completions.create(model="acme/chat", messages=messages, max_tokens=6, temperature=0)
    stream = client.chat.completions.create(
        model="acme/chat",
        messages=messages,
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_a_repeated_long_prompt_reports_its_cached_tokens(client: openai.OpenAI) -> None:
    """The engine's prefix cache, seen as OpenAI reports it: ``usage.prompt_tokens_details.cached_tokens``."""
    # 48 words no other test sends: the first request finds nothing cached, and stores its full blocks.
    document = " ".join(["b c a model q : world"] * 6 + ["france is"])
    asked = [[{"role": "user", "content": f"{document} {question}"}] for question in ("hello", "paris", "the")]
    first = client.chat.completions.create(model="acme/chat", messages=asked[0], max_tokens=2, temperature=0)
    assert first.usage is not None and first.usage.prompt_tokens > 40
    assert first.usage.prompt_tokens_details is not None and first.usage.prompt_tokens_details.cached_tokens == 0
    # Another question on the same document: its first 32-token block is reused, the rest prefilled.
    second = client.chat.completions.create(model="acme/chat", messages=asked[1], max_tokens=2, temperature=0)
    assert second.usage is not None and second.usage.prompt_tokens_details is not None
    assert 32 <= second.usage.prompt_tokens_details.cached_tokens < second.usage.prompt_tokens
    # A stream says the same in its usage chunk.
    stream = client.chat.completions.create(
        model="acme/chat", messages=asked[2], max_tokens=2, stream=True, stream_options={"include_usage": True}
    )
    last = list(stream)[-1]
    assert last.usage is not None and last.usage.prompt_tokens_details is not None
    assert last.usage.prompt_tokens_details.cached_tokens == second.usage.prompt_tokens_details.cached_tokens


def test_adapters_change_the_output_and_run_on_their_base(client: openai.OpenAI) -> None:
    def run(model: str) -> str:
        resp = client.completions.create(model=model, prompt="the capital of", max_tokens=12, temperature=0)
        return resp.choices[0].text

    outputs = {m: run(m) for m in ("acme/chat", "acme/lora-a", "acme/lora-b")}
    assert len(set(outputs.values())) == 3, outputs
    # max_loras=1: alternating adapters swaps the single slot and still gives the same answers.
    assert run("acme/lora-a") == outputs["acme/lora-a"] and run("lora-b") == outputs["acme/lora-b"]


def test_completion_echo_logprobs_n_and_seed(client: openai.OpenAI) -> None:
    # Sampled (temperature 1): the end-of-sequence token (id 2) is banned, or a draw of it would end early.
    resp = client.completions.create(
        model="acme/plain", prompt="hello world", max_tokens=4, echo=True, logprobs=2, logit_bias={"2": -100}
    )
    choice = resp.choices[0]
    assert choice.text.startswith("hello world")
    assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 4
    assert all(lp <= 0 for lp in choice.logprobs.token_logprobs or [])
    assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs or [])
    kwargs = {"model": "acme/plain", "prompt": "a b c", "max_tokens": 8, "temperature": 1.5, "n": 3}
    first = client.completions.create(seed=7, **kwargs)  # type: ignore[call-overload]
    again = client.completions.create(seed=7, **kwargs)  # type: ignore[call-overload]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert sorted(c.index for c in first.choices) == [0, 1, 2]
    assert len({c.text for c in first.choices}) > 1


def test_stop_strings_cut_the_text(client: openai.OpenAI) -> None:
    full = client.completions.create(model="acme/plain", prompt="a", max_tokens=10, temperature=0).choices[0].text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    cut = client.completions.create(model="acme/plain", prompt="a", max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and full.startswith(cut.choices[0].text)


def test_embeddings_rank_similar_sentences_higher(client: openai.OpenAI) -> None:
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply."]
    resp = client.embeddings.create(model="acme/minilm", input=sentences)
    vectors = [d.embedding for d in resp.data]
    assert len(vectors) == 3 and len(vectors[0]) == 384
    assert resp.usage.prompt_tokens > 0

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert all(math.isclose(cos(v, v), 1.0, rel_tol=1e-4) for v in vectors)  # normalised, per modules.json
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.3


def test_embeddings_equal_sentence_transformers(client: openai.OpenAI, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    for name, data in minilm_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    reference = SentenceTransformer(str(tmp_path), device="cpu").encode(["hello there", "good bye"])
    ours = client.embeddings.create(model="minilm", input=["hello there", "good bye"], encoding_format="float")
    for row, expected in zip(ours.data, reference, strict=True):
        assert max(abs(a - float(b)) for a, b in zip(row.embedding, expected, strict=True)) < 1e-4


def error_of(resp: object) -> dict[str, object]:
    body = resp.json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        (
            "/v1/chat/completions",
            {"model": "plain", "messages": [{"role": "user", "content": "hi"}]},
            400,
            "chat_template_missing",
        ),
        ("/v1/completions", {"model": "chat", "prompt": "a b", "max_tokens": 1000}, 400, "context_length_exceeded"),
        (
            "/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"parameters": {}}}],
            },
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "x"}],
                "functions": [{"name": "f"}],
            },
            400,
            "unsupported_parameter",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/no"}}},
            },
            400,
            "invalid_request",
        ),
        (  # the tiny word-level vocabulary has no token that writes "{"
            "/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
            },
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            {"model": "chat", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required"},
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": "f"},
            },
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"},
                "stop": ["}"],
            },
            400,
            "invalid_request",
        ),
        ("/v1/completions", {"model": "minilm", "prompt": "a"}, 400, "model_type_mismatch"),
        ("/v1/embeddings", {"model": "chat", "input": "a"}, 400, "model_type_mismatch"),
        ("/v1/embeddings", {"model": "minilm", "input": "a", "dimensions": 16}, 400, "unsupported_parameter"),
        ("/v1/completions", {"model": "nope", "prompt": "a"}, 404, "not_found"),
        ("/v1/completions", {"model": "chat", "prompt": "a", "temperature": 5}, 422, "invalid_request"),
        ("/v1/completions", {"model": "chat", "prompt": "a", "max_tokens": 0}, 400, "invalid_request"),
    ],
)
def test_bad_requests_get_a_clear_error_before_any_work(
    served: Served, path: str, body: dict[str, object], status: int, code: str
) -> None:
    resp = served.post(path, body)
    assert resp.status_code == status, resp.text
    assert error_of(resp)["code"] == code


def test_other_accounts_cannot_call_my_models(served: Served) -> None:
    other = served.client.app.state.services.accounts.create_key("mallory")  # type: ignore[attr-defined]
    resp = served.client.post(
        "/v1/completions", json={"model": "acme/chat", "prompt": "a"}, headers={"Authorization": f"Bearer {other}"}
    )
    assert resp.status_code == 404 and error_of(resp)["code"] == "not_found"
    assert served.client.post("/v1/completions", json={"model": "acme/chat", "prompt": "a"}).status_code == 401


def test_unknown_fields_are_accepted_and_logit_bias_applies(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    body = {"model": "plain", "prompt": "a", "max_tokens": 3, "temperature": 0, "x_custom": 1, "logit_bias": {"9": 100}}
    with caplog.at_level("INFO", logger="modelport.api.openai.router"):
        resp = served.post("/v1/completions", body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"].split() == ["paris"] * 3  # token 9 is "paris"
    assert "x_custom" in caplog.text
    body["logit_bias"] = {"100000": 5}
    assert error_of(served.post("/v1/completions", body))["param"] == "logit_bias"
