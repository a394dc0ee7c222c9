"""Tool calls from a scripted model's answer to the wire: the real detokenizer (which must keep special
marker tokens such as Mistral's [TOOL_CALLS]), the format's parser, OpenAI's message and stream shapes,
and the openai SDK's own stream assembler reading the chunks back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk
from tokenizers import AddedToken

from modelport.api.openai.convert import chat_chunks, chat_response
from modelport.manifest import Manifest, ModelKind
from modelport.serving.engine import Artifact, GenerationRequest, SamplingParams, TokenStep
from modelport.serving.grammar import Tool, ToolPlan
from modelport.serving.observe import Observers
from modelport.serving.service import Generation
from modelport.serving.text import Detokenizer, TextModel, load_text_model, special_ids
from modelport.serving.toolcalls import MARKERS
from tests.support.tinymodels import make_json_llama

WEATHER = {"city": "Paris", "unit": "celsius"}
TOOLS = (Tool("get_weather", {"type": "object"}), Tool("get_time", {"type": "object"}))

# What models trained on each format write when they call get_weather (and, for two, get_time too).
SCRIPTS = {
    "hermes": 'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    '\n</tool_call><tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>',
    "llama3_json": '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
    "mistral": '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}, '
    '{"name": "get_time", "arguments": {}}]',
}
EXPECTED = {
    "hermes": ("Let me look.", ["get_weather", "get_time"]),
    "llama3_json": (None, ["get_weather"]),
    "mistral": (None, ["get_weather", "get_time"]),
}


class Scripted:
    """An engine that answers with the tokens of a fixed text, then end-of-sequence."""

    name = "scripted"

    def __init__(self, ids: list[int], eos: int) -> None:
        self.ids, self.eos = ids, eos

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        for token in self.ids:
            yield TokenStep(token)
        yield TokenStep(self.eos, finish_reason="stop")


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    folder = make_json_llama(tmp_path_factory.mktemp("tools") / "m")
    model = load_text_model(folder)
    # As Llama 3 and Mistral hold them: special tokens, which decoding skips unless told to keep them.
    model.tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<|python_tag|>", "[TOOL_CALLS]")])
    return model


def _generation(text: TextModel, fmt: str, script: str, n: int = 1) -> Generation:
    folder = Path("/nowhere")
    artifact = Artifact("m", folder, Manifest(kind=ModelKind.MODEL), 1)
    request = GenerationRequest("r", artifact, None, [1], SamplingParams(max_tokens=500), 1024)
    keep = special_ids(text, MARKERS[fmt])
    choices = [(request, Detokenizer(text, [1], [], keep=keep)) for _ in range(n)]
    engine = Scripted(text.encode(script, special=True), min(text.eos_ids))
    plan = ToolPlan("auto", TOOLS, fmt)
    return Generation("m", "", 1, 0, choices, engine, text, "acct", Observers(), tool_plan=plan)  # type: ignore[arg-type]


async def _chunks(gen: Generation) -> list[dict[str, Any]]:
    return [c async for c in chat_chunks(gen, 1, False, False)]


@pytest.mark.parametrize("fmt", sorted(SCRIPTS))
def test_each_format_answers_with_tool_calls_whole_and_streamed(text: TextModel, fmt: str) -> None:
    content, names = EXPECTED[fmt]
    if fmt != "hermes":  # the marker is a special token: kept only because the detokenizer was told
        assert special_ids(text, MARKERS[fmt])
    whole = asyncio.run(chat_response(_generation(text, fmt, SCRIPTS[fmt]), 1, False))
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == content
    calls = choice["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == names
    assert json.loads(calls[0]["function"]["arguments"]) == WEATHER
    assert all(c["type"] == "function" for c in calls)
    if fmt == "mistral":  # Mistral's templates take back only ids of 9 letters and digits
        assert all(len(c["id"]) == 9 and c["id"].isalnum() for c in calls)
    else:
        assert all(c["id"].startswith("call_") for c in calls)

    # The openai SDK's own assembler reads the stream back into the same message.
    state = ChatCompletionStreamState()
    for chunk in asyncio.run(_chunks(_generation(text, fmt, SCRIPTS[fmt]))):
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    final = state.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert (message.content or None) == content
    assert [c.function.name for c in message.tool_calls or []] == names
    assert json.loads((message.tool_calls or [])[0].function.arguments) == WEATHER


def test_an_answer_without_a_call_is_plain_content(text: TextModel) -> None:
    whole = asyncio.run(chat_response(_generation(text, "hermes", "It is sunny in Paris."), 1, False))
    choice = whole["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"] == "It is sunny in Paris."


def test_named_and_required_answers_read_as_calls(text: TextModel) -> None:
    async def answer(plan: ToolPlan, script: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        gen = _generation(text, "hermes", script)
        gen.tool_plan = plan
        whole = await chat_response(gen, 1, False)
        gen = _generation(text, "hermes", script)
        gen.tool_plan = plan
        return whole, [c async for c in chat_chunks(gen, 1, False, False)]

    named = ToolPlan("named", TOOLS, None, name="get_weather")
    whole, chunks = asyncio.run(answer(named, json.dumps(WEATHER)))
    assert whole["choices"][0]["finish_reason"] == "stop"  # as OpenAI answers a named tool_choice
    assert json.loads(whole["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == WEATHER
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"][0]["delta"].get("tool_calls")]
    assert "id" in deltas[0]["tool_calls"][0] and all("id" not in d["tool_calls"][0] for d in deltas[1:])
    assert json.loads("".join(d["tool_calls"][0]["function"]["arguments"] for d in deltas)) == WEATHER

    required = ToolPlan("required", TOOLS, None)
    calls = [{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": WEATHER}]
    whole, chunks = asyncio.run(answer(required, json.dumps(calls)))
    assert whole["choices"][0]["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in whole["choices"][0]["message"]["tool_calls"]] == ["get_time", "get_weather"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
