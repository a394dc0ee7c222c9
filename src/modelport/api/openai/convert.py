"""OpenAI wire form <-> the inference service's domain types, both directions."""

from __future__ import annotations

import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from modelport.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SamplingFields
from modelport.api.openai.tools import ChoiceStream, read_answer, wire_call
from modelport.errors import InvalidRequest, UnsupportedParameter
from modelport.serving.engine import SamplingParams
from modelport.serving.grammar import ToolPlan, read_tools, response_format_grammar, tool_grammar, tool_plan
from modelport.serving.service import Delta, Embeddings, Generation, TextRequest, TokenInfo

# Request shapes beyond these are refused before any work: each is far past what clients send, and
# each bounds work the server does per request or per generated token.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256  # every generated token is checked against every stop string's prefixes
MAX_MESSAGES = 2048
MAX_LOGIT_BIAS = 1024
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit
MAX_TOOLS = 128  # OpenAI's own limit
SEED_RANGE = (-(2**63), 2**63 - 1)  # a signed 64-bit integer, as torch's generator and OpenAI's API take it


# --- requests ----------------------------------------------------------------------------------------
def refuse_unsupported(body: SamplingFields) -> None:
    """Fields with a defined meaning we cannot honour: a clear 400 beats silently ignoring them."""
    if body.functions:
        raise UnsupportedParameter("functions (deprecated by OpenAI) is not supported; send tools", param="functions")
    if body.suffix:
        raise UnsupportedParameter("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise UnsupportedParameter("best_of is not supported; use n", param="best_of")


def _stops(stop: str | list[str] | None, grammar: str | None = None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if stops and grammar is not None:
        raise InvalidRequest(
            "stop strings cannot be combined with response_format or a forced tool call: a stop would cut "
            "the structured answer",
            param="stop",
        )
    if len(stops) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"at most {MAX_STOP_STRINGS} stop strings", param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise InvalidRequest(f"a stop string may have at most {MAX_STOP_CHARS} characters", param="stop")
    return stops


def _params(body: SamplingFields, logprobs: int | None) -> SamplingParams:
    if body.seed is not None and not SEED_RANGE[0] <= body.seed <= SEED_RANGE[1]:
        raise InvalidRequest(f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}", param="seed")
    if len(body.logit_bias or {}) > MAX_LOGIT_BIAS:
        raise InvalidRequest(f"logit_bias may name at most {MAX_LOGIT_BIAS} tokens", param="logit_bias")
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        if not key.lstrip("-").isdigit() or not -100 <= value <= 100:
            raise InvalidRequest("logit_bias maps token ids to values between -100 and 100", param="logit_bias")
        bias[int(key)] = value
    return SamplingParams(
        max_tokens=1,  # the service fills the real value once it knows the prompt's length
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=0 if body.top_k in (None, -1) else int(body.top_k),
        min_p=body.min_p or 0.0,
        seed=body.seed,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        logit_bias=bias,
        logprobs=logprobs,
    )


def chat_request(body: ChatCompletionRequest) -> TextRequest:
    refuse_unsupported(body)
    if body.echo:
        raise UnsupportedParameter("echo is supported by /v1/completions only", param="echo")
    logprobs: int | None = None
    if body.logprobs is True:
        logprobs = body.top_logprobs or 0
    elif isinstance(body.logprobs, int) and not isinstance(body.logprobs, bool) and body.logprobs > 0:
        logprobs = min(body.logprobs, 20)
    if len(body.messages) > MAX_MESSAGES:
        raise InvalidRequest(f"at most {MAX_MESSAGES} messages per request", param="messages")
    messages = [_message(m.model_dump(exclude_none=True)) for m in body.messages]
    if len(body.tools or []) > MAX_TOOLS:
        raise InvalidRequest(f"at most {MAX_TOOLS} tools per request", param="tools")
    parallel = body.parallel_tool_calls is not False
    plan = tool_plan(read_tools(body.tools or []), body.tool_choice, parallel, None)
    grammar = response_format_grammar(body.response_format)
    forced = tool_grammar(plan) if plan is not None else None
    if forced is not None and grammar is not None:
        raise InvalidRequest(
            "response_format cannot be combined with a tool_choice that forces a call", param="tool_choice"
        )
    return TextRequest(
        model=body.model,
        messages=messages,
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        n=body.n,
        stop=_stops(body.stop, forced or grammar),
        params=replace(_params(body, logprobs), grammar=forced or grammar),
        tools=body.tools if plan is not None else None,
        # Under response_format the answer is the schema's JSON: the tools are shown, no call is read.
        tool_plan=plan if grammar is None else None,
    )


def _message(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("tool_calls"):
        message["tool_calls"] = [_call_for_template(c) for c in message["tool_calls"]]
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if any(part.get("type") != "text" for part in content):
            raise UnsupportedParameter("only text content parts are supported", param="messages")
        message["content"] = "".join(str(part.get("text", "")) for part in content)
    elif content is None:
        message["content"] = ""
    return message


def _call_for_template(call: Any) -> dict[str, Any]:
    """An assistant message's tool call as chat templates read it: ``arguments`` as an object, not the
    JSON text the wire carries (templates write it with ``tojson``), as transformers and vLLM pass it."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise InvalidRequest("each tool call needs function.name", param="messages")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            raise InvalidRequest("a tool call's function.arguments must be JSON", param="messages") from None
    read: dict[str, Any] = call | {"function": function | {"arguments": arguments if arguments is not None else {}}}
    return read


def completion_request(body: CompletionRequest) -> TextRequest:
    refuse_unsupported(body)
    if body.tools:
        raise UnsupportedParameter("tools are for /v1/chat/completions", param="tools")
    grammar = response_format_grammar(body.response_format)
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise UnsupportedParameter(
                "send one prompt per request (batched prompts are not supported)", param="prompt"
            )
        prompt = prompt[0]
    return TextRequest(
        model=body.model,
        prompt=prompt,  # type: ignore[arg-type]
        max_tokens=body.max_tokens if body.max_tokens is not None else 16,  # OpenAI's documented default
        n=body.n,
        stop=_stops(body.stop, grammar),
        echo=body.echo,
        params=replace(_params(body, body.logprobs), grammar=grammar),
    )


def embedding_inputs(body: EmbeddingRequest) -> list[str] | list[list[int]]:
    inputs: Any = body.input
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs per request", param="input")
    return list(inputs)


# --- responses ---------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(gen: Generation) -> dict[str, Any]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
        # OpenAI's field for prompt caching: the prompt tokens that were not computed again.
        "prompt_tokens_details": {"cached_tokens": gen.cached_tokens},
    }


class Choice:
    def __init__(self) -> None:
        self.text = ""
        self.tokens: list[TokenInfo] = []
        self.finish_reason: str | None = None

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.tokens += delta.tokens
        self.finish_reason = delta.finish_reason or self.finish_reason


async def collect(gen: Generation, n: int) -> list[Choice]:
    choices = [Choice() for _ in range(n)]
    async for delta in gen.deltas():
        choices[delta.index].add(delta)
    return choices


def chat_logprobs(tokens: list[TokenInfo]) -> dict[str, Any]:
    def entry(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = [entry(t.text, t.logprob) | {"top_logprobs": [entry(s, lp) for s, lp in t.top]} for t in tokens]
    return {"content": content, "refusal": None}


def completion_logprobs(tokens: list[TokenInfo], offset: int = 0) -> dict[str, Any]:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


async def chat_response(gen: Generation, n: int, logprobs: bool) -> dict[str, Any]:
    choices = await collect(gen, n)
    return {
        "id": new_id("chatcmpl"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": gen.model_name,
        "choices": [_chat_choice(gen, i, c, logprobs) for i, c in enumerate(choices)],
        "usage": usage(gen),
    }


def _chat_choice(gen: Generation, index: int, choice: Choice, logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": choice.text}
    finish = choice.finish_reason
    if gen.tool_plan is not None:
        content, calls, finish = read_answer(gen.tool_plan, choice.text, finish)
        message["content"] = content
        if calls:
            message["tool_calls"] = [wire_call(c) for c in calls]
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(choice.tokens) if logprobs else None,
        "finish_reason": finish,
    }


async def completion_response(gen: Generation, n: int, logprobs: bool, echo: bool) -> dict[str, Any]:
    choices = await collect(gen, n)
    prefix = gen.prompt_text if echo else ""
    return {
        "id": new_id("cmpl"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": gen.model_name,
        "choices": [
            {
                "index": i,
                "text": prefix + c.text,
                "logprobs": completion_logprobs(c.tokens, len(prefix)) if logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(gen),
    }


async def chat_chunks(gen: Generation, n: int, logprobs: bool, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
    base = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": int(time.time())}
    base["model"] = gen.model_name
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish: str | None, lp: Any = None) -> dict[str, Any]:
        return base | {"choices": [{"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}]} | extra

    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""}, None)
    plan = gen.tool_plan
    if plan is not None:
        async for c in _tool_chunks(gen, n, plan, logprobs, chunk):
            yield c
    else:
        async for d in gen.deltas():
            lp = chat_logprobs(d.tokens) if logprobs and d.tokens else None
            if d.text or lp:
                yield chunk(d.index, {"content": d.text}, None, lp)
            if d.finish_reason:
                yield chunk(d.index, {}, d.finish_reason)
    if include_usage:
        yield base | {"choices": [], "usage": usage(gen)}


async def _tool_chunks(
    gen: Generation, n: int, plan: ToolPlan, logprobs: bool, chunk: Callable[..., dict[str, Any]]
) -> AsyncIterator[dict[str, Any]]:
    """A chat stream whose answers may hold tool calls: each choice's text goes through its reader. The
    tokens' logprobs go with the first chunk their text makes, or alone while the text is held."""
    readers = [ChoiceStream(plan) for _ in range(n)]
    async for d in gen.deltas():
        lp = chat_logprobs(d.tokens) if logprobs and d.tokens else None
        deltas = readers[d.index].feed(d.text) or ([{}] if lp is not None else [])
        for j, delta in enumerate(deltas):
            yield chunk(d.index, delta, None, lp if j == 0 else None)
        if d.finish_reason:
            rest, finish = readers[d.index].finish(d.finish_reason)
            for delta in rest:
                yield chunk(d.index, delta, None)
            yield chunk(d.index, {}, finish)


async def completion_chunks(
    gen: Generation, n: int, logprobs: bool, echo: bool, include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    base = {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": gen.model_name}
    extra = {"usage": None} if include_usage else {}
    offsets = [len(gen.prompt_text) if echo else 0] * n

    def chunk(index: int, text: str, finish: str | None, lp: Any = None) -> dict[str, Any]:
        # ``delta.content`` too: the together 1.x SDK reads streamed completion text from there.
        choice = {"index": index, "text": text, "delta": {"content": text}, "logprobs": lp, "finish_reason": finish}
        return base | {"choices": [choice]} | extra

    if echo:
        for i in range(n):
            yield chunk(i, gen.prompt_text, None)
    async for d in gen.deltas():
        lp = completion_logprobs(d.tokens, offsets[d.index]) if logprobs else None
        offsets[d.index] += len(d.text)
        if d.text or d.finish_reason or lp:
            yield chunk(d.index, d.text, d.finish_reason, lp)
    if include_usage:
        yield base | {"choices": [], "usage": usage(gen)}


def embeddings_response(result: Embeddings, encoding: str) -> dict[str, Any]:
    def encode(vector: list[float]) -> list[float] | str:
        if encoding == "base64":  # little-endian float32, as the openai SDK decodes it
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(result.vectors)],
        "model": result.model_name,
        "usage": {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens},
    }
