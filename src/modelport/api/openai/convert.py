"""OpenAI wire form <-> the inference service's domain types, both directions."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from modelport.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, SamplingFields
from modelport.errors import InvalidRequest, UnsupportedParameter
from modelport.serving.engine import SamplingParams
from modelport.serving.service import Delta, Embeddings, Generation, TextRequest, TokenInfo

# Request shapes beyond these are refused before any work: each is far past what clients send, and
# each bounds work the server does per request or per generated token.
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256  # every generated token is checked against every stop string's prefixes
MAX_MESSAGES = 2048
MAX_LOGIT_BIAS = 1024
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's own limit
SEED_RANGE = (-(2**63), 2**63 - 1)  # a signed 64-bit integer, as torch's generator and OpenAI's API take it


# --- requests ----------------------------------------------------------------------------------------
def refuse_unsupported(body: SamplingFields) -> None:
    """Fields with a defined meaning we cannot honour: a clear 400 beats silently ignoring them."""
    if (body.tools or body.functions) and body.tool_choice != "none":
        raise UnsupportedParameter("tool and function calling are not supported yet", param="tools")
    if body.response_format and body.response_format.get("type", "text") != "text":
        raise UnsupportedParameter("only response_format {'type': 'text'} is supported", param="response_format")
    if body.suffix:
        raise UnsupportedParameter("suffix (fill-in-the-middle) is not supported", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise UnsupportedParameter("best_of is not supported; use n", param="best_of")


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
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
    return TextRequest(
        model=body.model,
        messages=messages,
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        n=body.n,
        stop=_stops(body.stop),
        params=_params(body, logprobs),
    )


def _message(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        if any(part.get("type") != "text" for part in content):
            raise UnsupportedParameter("only text content parts are supported", param="messages")
        message["content"] = "".join(str(part.get("text", "")) for part in content)
    elif content is None:
        message["content"] = ""
    return message


def completion_request(body: CompletionRequest) -> TextRequest:
    refuse_unsupported(body)
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
        stop=_stops(body.stop),
        echo=body.echo,
        params=_params(body, body.logprobs),
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


def usage(gen: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": gen.prompt_tokens,
        "completion_tokens": gen.completion_tokens,
        "total_tokens": gen.prompt_tokens + gen.completion_tokens,
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
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(c.tokens) if logprobs else None,
                "finish_reason": c.finish_reason,
            }
            for i, c in enumerate(choices)
        ],
        "usage": usage(gen),
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
    async for d in gen.deltas():
        lp = chat_logprobs(d.tokens) if logprobs and d.tokens else None
        if d.text or lp:
            yield chunk(d.index, {"content": d.text}, None, lp)
        if d.finish_reason:
            yield chunk(d.index, {}, d.finish_reason)
    if include_usage:
        yield base | {"choices": [], "usage": usage(gen)}


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
