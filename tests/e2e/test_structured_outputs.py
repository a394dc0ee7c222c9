"""Structured outputs and tool calls through the official clients, against a live server and a tiny
random-weight model, which never writes valid JSON by chance: every answer below is valid only because
the grammar made it so."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.e2e.conftest import Live
from tests.e2e.test_inference_clients import upload
from tests.support.fakehub import FakeHub
from tests.support.tinymodels import make_json_llama, make_lora

pytestmark = [pytest.mark.e2e, pytest.mark.db_agnostic]

MESSAGES: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


class Weather(BaseModel):
    city: str = Field(max_length=12)
    celsius: int = Field(ge=-50, le=60)
    sunny: bool


class Stop(BaseModel):
    city: str = Field(max_length=12)
    nights: int = Field(ge=1, le=9)


class PlanTrip(BaseModel):
    """Plan a trip: a nested model, so its schema refers to its own $defs."""

    start: Stop
    stops: list[Stop] = Field(max_length=2)


class GetWeather(BaseModel):
    """Look up the weather of a city."""

    city: str = Field(max_length=12)
    unit: str = Field(pattern="^(celsius|fahrenheit)$")


TIME_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}

TOGETHER_JSON = """
import json
from together import Together
client = Together()
resp = client.chat.completions.create(
    model={model!r}, messages={messages!r}, max_tokens=300, temperature=1, seed=3,
    response_format={response_format!r},
)
print(json.dumps({{"content": resp.choices[0].message.content, "finish": str(resp.choices[0].finish_reason)}}))
"""


@pytest.fixture
def jsonic(live: Live, hub: FakeHub, tmp_path: Path) -> Live:
    """``jsonic``: a byte-level BPE model with a Hermes-style tools template, and an adapter on it."""
    folder = make_json_llama(tmp_path / "jsonic")
    upload(live, hub, "jsonic", folder)
    upload(live, hub, "jsonic-lora", make_lora(tmp_path / "lora", folder), model_type="adapter", base_model="jsonic")
    return live


def test_parse_stream_adapters_and_a_mixed_batch_all_answer_valid_json(jsonic: Live) -> None:
    client = openai.OpenAI(base_url=f"{jsonic.url}/v1", api_key=jsonic.key, max_retries=0)
    manifest = jsonic.get("/v1/models/devuser/jsonic")["manifest"]
    assert manifest["tool_call_parser"] == "hermes"  # read off its chat template at upload

    for model in ("devuser/jsonic", "devuser/jsonic-lora"):
        parsed = client.chat.completions.parse(
            model=model, messages=MESSAGES, response_format=Weather, max_tokens=300, seed=1
        )
        assert isinstance(parsed.choices[0].message.parsed, Weather), parsed
        with client.chat.completions.stream(
            model=model, messages=MESSAGES, response_format=Weather, max_tokens=300, seed=2
        ) as stream:
            final = stream.get_final_completion()
        assert isinstance(final.choices[0].message.parsed, Weather)

    # Constrained and free-text rows in the same batches; the free ones stay free. Closed, as strict
    # schemas are: a schema open to more properties lets a random model add keys until max_tokens.
    schema = Weather.model_json_schema() | {"additionalProperties": False}
    results: dict[int, tuple[bool, str | None]] = {}

    def ask(i: int) -> None:
        extra: dict[str, Any] = {}
        if i % 2 == 0:
            extra["response_format"] = {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}
        model = "devuser/jsonic-lora" if i % 3 == 0 else "devuser/jsonic"
        resp = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=300, seed=i, **extra)
        results[i] = (i % 2 == 0, resp.choices[0].message.content)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    for constrained, content in results.values():
        if constrained:
            jsonschema.validate(json.loads(content or ""), schema)
        else:
            with pytest.raises((ValueError, jsonschema.ValidationError)):
                jsonschema.validate(json.loads(content or ""), schema)

    # /v1/completions takes response_format too (as vLLM's does), here in Together's flavour.
    together_flavour = {"response_format": {"type": "json_schema", "schema": schema}}
    completion = client.completions.create(
        model="devuser/jsonic", prompt="weather:", max_tokens=300, seed=9, extra_body=together_flavour
    )
    jsonschema.validate(json.loads(completion.choices[0].text), schema)

    # A schema the grammar library cannot compile is a 400 before any work.
    with pytest.raises(openai.BadRequestError, match="cannot be enforced") as bad:
        client.chat.completions.create(
            model="devuser/jsonic",
            messages=MESSAGES,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
        )
    assert bad.value.param == "response_format"


def test_forced_and_required_tool_calls_parse_and_tool_results_round_trip(jsonic: Live) -> None:
    client = openai.OpenAI(base_url=f"{jsonic.url}/v1", api_key=jsonic.key, max_retries=0)
    weather_tool = openai.pydantic_function_tool(GetWeather)
    named: Any = {"type": "function", "function": {"name": "GetWeather"}}

    parsed = client.chat.completions.parse(
        model="devuser/jsonic", messages=MESSAGES, tools=[weather_tool], tool_choice=named, max_tokens=300, seed=4
    )
    call = (parsed.choices[0].message.tool_calls or [])[0]
    assert isinstance(call.function.parsed_arguments, GetWeather), parsed
    assert parsed.choices[0].finish_reason == "stop"

    with client.chat.completions.stream(
        model="devuser/jsonic-lora", messages=MESSAGES, tools=[weather_tool], tool_choice=named, max_tokens=300, seed=5
    ) as stream:
        final = stream.get_final_completion()
    streamed = (final.choices[0].message.tool_calls or [])[0]
    assert isinstance(streamed.function.parsed_arguments, GetWeather) and streamed.id.startswith("call_")

    trip_tool = openai.pydantic_function_tool(PlanTrip)
    required = client.chat.completions.create(
        model="devuser/jsonic",
        messages=MESSAGES,
        tools=[weather_tool, TIME_TOOL, trip_tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=300,
        seed=6,
    )
    choice = required.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls or []) == 1
    got = (choice.message.tool_calls or [])[0].function
    schemas = {
        "GetWeather": weather_tool["function"]["parameters"],
        "get_time": TIME_TOOL["function"]["parameters"],
        "PlanTrip": trip_tool["function"]["parameters"],
    }
    jsonschema.validate(json.loads(got.arguments), schemas[got.name])

    # The call and its result go back in the conversation, rendered by the model's own template.
    history: Any = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(include={"id", "type", "function"})]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"celsius": 21}'},
    ]
    follow_up = client.chat.completions.create(
        model="devuser/jsonic", messages=history, tools=[weather_tool], max_tokens=5, seed=7
    )
    fresh = client.chat.completions.create(
        model="devuser/jsonic", messages=MESSAGES, tools=[weather_tool], max_tokens=5, seed=7
    )
    # The call (name and arguments) and the result, as the template writes them: dozens of tokens more.
    assert follow_up.usage and fresh.usage and follow_up.usage.prompt_tokens > fresh.usage.prompt_tokens + 20

    # A named tool that is not among the tools: a 400 naming tool_choice.
    resp = httpx.post(
        f"{jsonic.url}/v1/chat/completions",
        json={"model": "devuser/jsonic", "messages": MESSAGES, "tools": [TIME_TOOL], "tool_choice": named},
        headers={"Authorization": f"Bearer {jsonic.key}"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "tool_choice"


@pytest.mark.parametrize("version", ["1.5.35", "2.42.0"])
def test_together_sdks_json_mode(jsonic: Live, version: str) -> None:
    schema = Weather.model_json_schema() | {"additionalProperties": False}
    for response_format in (
        {"type": "json_object", "schema": schema},  # Together's documented JSON mode
        {"type": "json_schema", "schema": schema},
        {"type": "json_schema", "json_schema": {"name": "weather", "schema": schema}},
    ):
        code = TOGETHER_JSON.format(model="devuser/jsonic", messages=MESSAGES, response_format=response_format)
        got = jsonic.sdk(version, code)
        jsonschema.validate(json.loads(got["content"]), schema)
