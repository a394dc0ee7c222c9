"""OpenAI's inference routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import StreamingResponse

from modelport.api.deps import InferenceDep, PrincipalDep
from modelport.api.openai import convert
from modelport.api.openai.errors import stream_error
from modelport.api.openai.protocol import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Lenient
from modelport.errors import UnsupportedParameter

log = logging.getLogger(__name__)
router = APIRouter()


def _note_unknown(body: Lenient, route: str) -> None:
    unknown = body.unknown_fields()
    if unknown:
        log.info("%s: ignoring unknown fields %s", route, ", ".join(unknown))


DEPLOYMENT_HEADER = "x-modelport-deployment"  # which dedicated deployment answered (a route splits traffic)


def _headers(deployment: str | None) -> dict[str, str]:
    return {DEPLOYMENT_HEADER: deployment} if deployment else {}


def _sse(events: AsyncIterator[dict[str, Any]], deployment: str | None = None) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
        except Exception as e:  # the 200 is already sent: report in-band, as OpenAI does
            yield f"data: {json.dumps(stream_error(e))}\n\n"
        yield "data: [DONE]\n\n"

    # Closing the response (client gone) closes ``events``, which cancels the engine sequences.
    headers = {"Cache-Control": "no-cache"} | _headers(deployment)
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, who: PrincipalDep, inference: InferenceDep, response: Response
) -> dict[str, Any] | StreamingResponse:
    _note_unknown(body, "chat/completions")
    request = convert.chat_request(body)
    gen = await inference.generate(who, request)
    logprobs = request.params.logprobs is not None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(convert.chat_chunks(gen, request.n, logprobs, usage), gen.deployment)
    response.headers.update(_headers(gen.deployment))
    return await convert.chat_response(gen, request.n, logprobs)


@router.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, who: PrincipalDep, inference: InferenceDep, response: Response
) -> dict[str, Any] | StreamingResponse:
    _note_unknown(body, "completions")
    request = convert.completion_request(body)
    gen = await inference.generate(who, request)
    logprobs = request.params.logprobs is not None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _sse(convert.completion_chunks(gen, request.n, logprobs, request.echo, usage), gen.deployment)
    response.headers.update(_headers(gen.deployment))
    return await convert.completion_response(gen, request.n, logprobs, request.echo)


@router.post("/embeddings")
async def embeddings(
    body: EmbeddingRequest, who: PrincipalDep, inference: InferenceDep, response: Response
) -> dict[str, Any]:
    _note_unknown(body, "embeddings")
    result = await inference.embed(who, body.model, convert.embedding_inputs(body))
    response.headers.update(_headers(result.deployment))
    if body.dimensions is not None and result.vectors and body.dimensions != len(result.vectors[0]):
        raise UnsupportedParameter(
            f"{result.model_name} produces {len(result.vectors[0])}-dimensional embeddings; "
            "dimensions cannot change that",
            param="dimensions",
        )
    return convert.embeddings_response(result, body.encoding_format)
