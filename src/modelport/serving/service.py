"""``InferenceService``: what the OpenAI-style routes call. Never imports the web framework.

It resolves the ``model`` a caller names (a model or an adapter of theirs), checks the request against
the model before any work (type, context length, parameters), renders chat templates, and turns the
engine's token stream into per-choice text deltas with logprobs, finish reasons and usage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from modelport.accounts.quotas import RateLimiter
from modelport.accounts.service import Principal
from modelport.catalog.service import Catalog
from modelport.chat_template_workers import TemplateBudget, TemplateRenderer
from modelport.errors import ContextLengthExceeded, InvalidRequest, NotFound, WrongModelType
from modelport.manifest import ModelType, context_length_of
from modelport.serving.artifacts import ArtifactCache
from modelport.serving.engine import Artifact, Engine, GenerationRequest, Pooling, SamplingParams, TokenStep
from modelport.serving.grammar import ToolPlan
from modelport.serving.limits import PromptLimits, TokenizerLanes, messages_text
from modelport.serving.observe import Kind, Observer, Observers, Outcome, Served
from modelport.serving.text import Detokenizer, TextModel, TextModels, special_ids
from modelport.serving.toolcalls import MARKERS, detect_format
from modelport.storage.db.tables import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextRequest:
    """A completion or chat request, already in domain terms (the router converts the wire form)."""

    model: str
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    echo: bool = False
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=16))
    # Chat with tools: the definitions as sent (for the template) and how they are to be used.
    tools: list[dict[str, Any]] | None = None
    tool_plan: ToolPlan | None = None


@dataclass(frozen=True)
class TokenInfo:
    text: str
    logprob: float
    top: list[tuple[str, float]]


@dataclass(frozen=True)
class Delta:
    index: int
    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None


@dataclass
class Generation:
    """A checked request, ready to stream. Iterate ``deltas()`` exactly once."""

    model_name: str
    prompt_text: str
    prompt_tokens: int
    completion_tokens: int
    _choices: list[tuple[GenerationRequest, Detokenizer]]
    _engine: Engine
    _text: TextModel
    _account_id: str
    _observer: Observer
    _accepted: float = field(default_factory=time.monotonic)
    deployment: str | None = None  # the dedicated deployment that answers (its wire id), if any
    tool_plan: ToolPlan | None = None  # how tool calls are read from the answers, for the router
    cached_tokens: int = 0  # of the prompt, the tokens the engine found in its prefix cache (most of any choice)

    async def deltas(self) -> AsyncIterator[Delta]:
        queue: asyncio.Queue[Delta | BaseException | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self._pump(i, req, detok, queue)) for i, (req, detok) in enumerate(self._choices)]
        outcome = Outcome.CANCELLED  # unless the loop ends or raises: the consumer stopped early
        try:
            remaining = len(tasks)
            while remaining:
                item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    outcome = Outcome.ERROR
                    raise item
                else:
                    yield item
            outcome = Outcome.OK
        finally:
            for task in tasks:
                task.cancel()
            # Before the await: a client's disconnect cancels this task's scope again at every await.
            self._observer.finished(self._served(outcome))
            await asyncio.gather(*tasks, return_exceptions=True)

    def _served(self, outcome: Outcome) -> Served:
        return Served(
            self._account_id,
            self.model_name,
            Kind.TEXT,
            self._engine.name,
            self.prompt_tokens,
            self.completion_tokens,
            outcome,
            time.monotonic() - self._accepted,
        )

    async def _pump(
        self, index: int, req: GenerationRequest, detok: Detokenizer, queue: asyncio.Queue[Delta | BaseException | None]
    ) -> None:
        want_logprobs = req.params.logprobs is not None
        last: float | None = None
        try:
            stream = self._engine.generate(req)
            try:
                async for step in stream:
                    now = time.monotonic()
                    if last is None:
                        self._observer.first_token(self.model_name, now - self._accepted)
                    else:
                        self._observer.token(self.model_name, now - last)
                    last = now
                    self.completion_tokens += 1
                    self.cached_tokens = max(self.cached_tokens, step.cached_tokens)
                    final = step.finish_reason is not None
                    text = detok.add(step.token_id, last=final)
                    info = [self._token_info(step)] if want_logprobs else []
                    if detok.stopped:  # a stop string: end now, and let the engine free the row
                        await queue.put(Delta(index, text, info, "stop"))
                        break
                    await queue.put(Delta(index, text, info, step.finish_reason))
            finally:
                await stream.aclose()
        except Exception as e:  # handed to the consumer, which re-raises it
            await queue.put(e)
        finally:
            await queue.put(None)

    def _token_info(self, step: TokenStep) -> TokenInfo:
        decode = self._text.decode
        top = [(decode([t]), lp) for t, lp in step.top_logprobs or []]
        return TokenInfo(decode([step.token_id]), step.logprob if step.logprob is not None else 0.0, top)


@dataclass(frozen=True)
class Routed:
    """A dedicated deployment chosen for one request: what it serves and the engine to send it to."""

    model_id: str
    revision_id: str | None
    name: str  # the name answers carry: the endpoint's
    engine: Engine
    deployment: str  # the deployment's wire id (``dep_…``)
    adapter_revision_id: str | None = None  # an adapter attached to it at this revision


class Routing(Protocol):
    """Dedicated endpoints (``endpoints/routing.py``), seen from here without importing them."""

    def by_name(self, who: Principal, name: str) -> Routed | None: ...

    def for_model(self, model_id: str, revision_id: str | None, adapter_id: str | None) -> Routed | None: ...


@dataclass(frozen=True)
class Target:
    model: Model
    adapter: Model | None
    engine: Engine
    name: str
    deployment: str | None = None


class InferenceService:
    def __init__(
        self,
        catalog: Catalog,
        artifacts: ArtifactCache,
        engine: Engine,
        max_n: int = 16,
        limiter: RateLimiter | None = None,
        *,
        limits: PromptLimits | None = None,
        renderer: TemplateRenderer | None = None,
        routing: Routing | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.catalog, self.artifacts, self.engine, self.max_n = catalog, artifacts, engine, max_n
        self.limiter = limiter or RateLimiter(0)
        self.limits = limits or PromptLimits.from_settings(catalog.settings)
        self.renderer = renderer or TemplateRenderer(TemplateBudget.from_settings(catalog.settings))
        self.lanes = TokenizerLanes()
        self.texts = TextModels()
        self.routing = routing  # dedicated endpoints, checked before the shared engine
        self.observer = observer or Observers()  # metrics and usage (``observe.py``)

    def _target(self, who: Principal, name: str) -> Target:
        """An endpoint's name routes to its replicas; a model or adapter to its base's started endpoint
        if there is one, else to this server's own engine ("serverless")."""
        if self.routing is not None:
            hit = self.routing.by_name(who, name)
            if hit is not None:
                model = self.catalog.model_at(hit.model_id, hit.revision_id)
                if model is None:  # the model is deleted only once its endpoints are
                    raise NotFound(f"endpoint {hit.name} has no model", param="model")
                return Target(model, None, hit.engine, hit.name, hit.deployment)
        model, adapter = self.catalog.serving_target(who, name)
        adapter_id = adapter.id if adapter is not None else None
        routing = self.routing
        dedicated = routing.for_model(model.id, model.revision_id, adapter_id) if routing is not None else None
        if dedicated is not None:
            if adapter is not None and dedicated.adapter_revision_id not in (None, adapter.revision_id):
                adapter = self.catalog.model_at(adapter.id, dedicated.adapter_revision_id) or adapter
            return Target(model, adapter, dedicated.engine, (adapter or model).name, dedicated.deployment)
        return Target(model, adapter, self.engine, (adapter or model).name)

    # --- text generation ---------------------------------------------------------------------------
    async def generate(self, who: Principal, req: TextRequest) -> Generation:
        """Check everything that can be checked up front; raises before any tokens are generated.

        The cheap checks come first: the prompt's size in bytes before any tokenizing, which (like the
        chat template's rendering) then runs off the event loop."""
        self.limiter.take(who.account_id)  # before the name is looked up: refused calls count too
        if not 1 <= req.n <= self.max_n:
            raise InvalidRequest(f"n must be between 1 and {self.max_n}", param="n")
        target = self._target(who, req.model)
        model, adapter = target.model, target.adapter
        if model.type == ModelType.EMBEDDING:
            raise WrongModelType(f"{target.name} is an embedding model; call /v1/embeddings", param="model")
        context = context_length_of(model.manifest, self.catalog.settings.max_model_len)
        if req.messages is not None:
            tools_text = json.dumps(req.tools) if req.tools is not None else ""
            self.limits.check_text(messages_text(req.messages) + tools_text, context, "messages")
        elif isinstance(req.prompt, str):
            self.limits.check_text(req.prompt, context, "prompt")
        base, lora = await asyncio.to_thread(self._artifacts, model, adapter)
        text = await asyncio.to_thread(self.texts.get, base.id, base.path)
        vocab = text.vocab_size
        if any(not 0 <= t < vocab for t in req.params.logit_bias):
            raise InvalidRequest(
                f"logit_bias names a token id outside the vocabulary (0..{vocab - 1})", param="logit_bias"
            )
        plan = self._tool_plan(req, model, text)
        prompt_text, prompt_ids = await self._prompt(who, target.name, text, req, context)
        max_tokens = self._max_tokens(req, len(prompt_ids), context)
        params = replace(req.params, max_tokens=max_tokens, stop_token_ids=req.params.stop_token_ids | text.eos_ids)
        choices = []
        markers = special_ids(text, MARKERS[plan.format]) if plan is not None and plan.format else None
        for i in range(req.n):
            seed = params.seed + i if params.seed is not None else None
            request_id, choice = f"gen-{uuid.uuid4().hex[:12]}", replace(params, seed=seed)
            request = GenerationRequest(request_id, base, lora, prompt_ids, choice, context, who.account_id)
            choices.append((request, Detokenizer(text, prompt_ids, req.stop, keep=markers)))
        await target.engine.prepare(choices[0][0])
        return Generation(
            target.name,
            prompt_text,
            len(prompt_ids),
            0,
            choices,
            target.engine,
            text,
            who.account_id,
            self.observer,
            deployment=target.deployment,
            tool_plan=plan,
        )

    def _tool_plan(self, req: TextRequest, model: Model, text: TextModel) -> ToolPlan | None:
        """The request's plan for tools, with the format ``model`` (the base) writes calls in: its
        manifest's (set at upload), else read off the template it serves with."""
        if req.tool_plan is None:
            return None
        fmt = model.manifest.tool_call_parser if model.manifest is not None else None
        return replace(req.tool_plan, format=fmt or detect_format(text.chat_template))

    async def _prompt(
        self, who: Principal, name: str, text: TextModel, req: TextRequest, context: int
    ) -> tuple[str, list[int]]:
        """The prompt's text and ids. Rendering runs in a template worker and tokenizing in a thread:
        the event loop only waits."""
        if req.messages is not None:
            rendered = await text.arender_chat(
                name,
                req.messages,
                renderer=self.renderer,
                owner=who.account_id,
                max_chars=self.limits.cap(context),
                tools=req.tools,
            )
            # Templates carry their own BOS.
            ids = await self.lanes.run(len(rendered), partial(text.encode, rendered, special=False))
            return rendered, ids
        if isinstance(req.prompt, list):
            ids = self.limits.check_ids(req.prompt, text.vocab_size, "prompt", context=context)
            return await self.lanes.run(4 * len(ids), partial(text.decode, ids)), ids
        if not req.prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return req.prompt, await self.lanes.run(len(req.prompt), partial(text.encode, req.prompt, special=True))

    def _max_tokens(self, req: TextRequest, prompt_tokens: int, context: int) -> int:
        if prompt_tokens == 0:
            raise InvalidRequest("the prompt encodes to no tokens", param="prompt")
        if req.max_tokens is not None and req.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1", param="max_tokens")
        wanted = req.max_tokens if req.max_tokens is not None else context - prompt_tokens
        if prompt_tokens + max(wanted, 1) > context:
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, you requested "
                f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, {wanted} for the completion). "
                "Please reduce the prompt or max_tokens.",
                param="max_tokens" if req.max_tokens is not None else "messages",
            )
        return wanted

    # --- embeddings --------------------------------------------------------------------------------
    async def embed(self, who: Principal, model_ref: str, inputs: list[str] | list[list[int]]) -> Embeddings:
        self.limiter.take(who.account_id)
        target = self._target(who, model_ref)
        model = target.model
        if target.adapter is not None or model.type != ModelType.EMBEDDING:
            raise WrongModelType(
                f"{target.name} is not an embedding model; call /v1/chat/completions or /v1/completions",
                param="model",
            )
        if not inputs:
            raise InvalidRequest("input must not be empty", param="input")
        self.limits.check_total(inputs, "input")
        artifact, _ = await asyncio.to_thread(self._artifacts, model, None)
        text = await asyncio.to_thread(self.texts.get, artifact.id, artifact.path)
        size = sum(len(item) for item in inputs if isinstance(item, str))
        batch, pooling = await self.lanes.run(size, partial(self._embedding_batch, model, artifact, text, inputs))
        tokens, accepted, outcome = sum(len(ids) for ids in batch), time.monotonic(), Outcome.ERROR
        try:
            vectors = await target.engine.embed(artifact, batch, pooling)
            outcome = Outcome.OK
        finally:
            elapsed = time.monotonic() - accepted
            name, engine = target.name, target.engine.name
            self.observer.finished(Served(who.account_id, name, Kind.EMBEDDING, engine, tokens, 0, outcome, elapsed))
        return Embeddings(target.name, vectors, tokens, target.deployment)

    def _embedding_batch(
        self, model: Model, artifact: Artifact, text: TextModel, inputs: list[str] | list[list[int]]
    ) -> tuple[list[list[int]], Pooling]:
        """Token ids of every input (blocking: run in a thread), and the model's pooling."""
        pooling = read_pooling(artifact.path)
        limit = pooling.max_seq_length or context_length_of(model.manifest, self.catalog.settings.max_model_len)
        return [self._embedding_ids(text, item, limit) for item in inputs], pooling

    def _embedding_ids(self, text: TextModel, item: str | list[int], limit: int) -> list[int]:
        # Like sentence-transformers: longer inputs are truncated to the model's max_seq_length. Text far
        # past what those tokens can spell is cut before tokenizing, so its length costs nothing.
        if isinstance(item, list):
            ids = self.limits.check_ids(item[:limit], text.vocab_size, "input")
        else:
            ids = text.encode(item[: self.limits.embedding_chars(limit)], special=True)
        if not ids:
            raise InvalidRequest("an input encodes to no tokens", param="input")
        return ids[:limit]

    # --- shared ------------------------------------------------------------------------------------
    def _artifacts(self, model: Model, adapter: Model | None) -> tuple[Artifact, Artifact | None]:
        base = self.artifacts.get(model, self.catalog.files(model))
        lora = self.artifacts.get(adapter, self.catalog.files(adapter)) if adapter is not None else None
        return base, lora


@dataclass(frozen=True)
class Embeddings:
    model_name: str
    vectors: list[list[float]]
    prompt_tokens: int
    deployment: str | None = None


def read_pooling(path: Path) -> Pooling:
    """Pooling and normalisation as sentence-transformers would apply them, from the model's own files."""
    modules: list[dict[str, Any]] = []
    if (path / "modules.json").is_file():
        modules = json.loads((path / "modules.json").read_text())
    pooling_dir = next((m.get("path", "") for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    mode = "mean"
    if pooling_dir is not None and (path / pooling_dir / "config.json").is_file():
        cfg = json.loads((path / pooling_dir / "config.json").read_text())
        for flag, name in (
            ("pooling_mode_cls_token", "cls"),
            ("pooling_mode_max_tokens", "max"),
            ("pooling_mode_lasttoken", "lasttoken"),
            ("pooling_mode_mean_tokens", "mean"),
        ):
            if cfg.get(flag):
                mode = name
                break
        mode = cfg.get("pooling_mode", mode) if isinstance(cfg.get("pooling_mode"), str) else mode
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    max_len = None
    if (path / "sentence_bert_config.json").is_file():
        max_len = json.loads((path / "sentence_bert_config.json").read_text()).get("max_seq_length")
    return Pooling(mode, normalize, int(max_len) if max_len else None)
