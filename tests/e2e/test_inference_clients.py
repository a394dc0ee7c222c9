"""A live server answers the official clients' inference calls on uploaded models and adapters."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.conftest import Live
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import files_of

# Client conformance: what the clients see does not depend on the database.
pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

MESSAGES = [{"role": "user", "content": "the capital of france is"}]

TOGETHER_CHAT = """
import json
from together import Together
client = Together()
resp = client.chat.completions.create(model={model!r}, messages={messages!r}, max_tokens=6, temperature=0)
text = ""
for chunk in client.chat.completions.create(
    model={model!r}, messages={messages!r}, max_tokens=6, temperature=0, stream=True
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
completion = ""
for chunk in client.completions.create(model={model!r}, prompt="hello", max_tokens=4, temperature=0, stream=True):
    completion += chunk.choices[0].delta.content if chunk.choices[0].delta else chunk.choices[0].text
print(json.dumps({{"content": resp.choices[0].message.content, "streamed": text, "completion": completion,
                  "finish": str(resp.choices[0].finish_reason), "total": resp.usage.total_tokens}}))
"""


def upload(live: Live, hub: FakeHub, name: str, folder: Path, **extra: str) -> None:
    hub.add(f"acme/{name}", files_of(folder))
    resp = httpx.post(
        f"{live.url}/v1/models",
        json={"model_name": name, "model_source": f"acme/{name}", **extra},
        headers={"Authorization": f"Bearer {live.key}"},
    )
    assert resp.status_code == 200, resp.text
    assert live.wait_job(resp.json()["data"]["job_id"])["status"] == "Complete"


def test_openai_and_together_clients_chat_with_a_model_and_its_adapter(
    live: Live, hub: FakeHub, tiny_llama: Path, tiny_lora: Path
) -> None:
    upload(live, hub, "tiny", tiny_llama)
    upload(live, hub, "tiny-lora", tiny_lora, model_type="adapter", base_model="tiny")
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=live.key, max_retries=0)
    assert {"devuser/tiny", "devuser/tiny-lora"} <= {m.id for m in client.models.list()}
    answers = {}
    for model in ("devuser/tiny", "devuser/tiny-lora"):
        resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=6, temperature=0)  # type: ignore[arg-type]
        answers[model] = resp.choices[0].message.content
        stream = client.chat.completions.create(
            model=model,
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=6,
            temperature=0,
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answers[model]
        completion = client.completions.create(model=model, prompt="hello", max_tokens=4, temperature=0)
        assert completion.usage and 1 <= completion.usage.completion_tokens <= 4
        for version in ("1.5.35", "2.42.0"):
            got = live.sdk(version, TOGETHER_CHAT.format(model=model, messages=MESSAGES))
            assert got["content"] == answers[model] == got["streamed"], (version, got)
            assert got["completion"] == completion.choices[0].text, (version, got)
            assert got["total"] > 0
    assert answers["devuser/tiny"] != answers["devuser/tiny-lora"]
