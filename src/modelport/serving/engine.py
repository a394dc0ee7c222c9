"""The ``Engine`` interface: what the inference service needs from a backend, in token ids.

Engines are chosen by name (``Settings.engine``) from ``ENGINES``; adding one is a module and a line
in ``engines/__init__.py``. ``engines/fake.py`` is the test double.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from modelport.manifest import Manifest


@dataclass(frozen=True)
class Artifact:
    """A stored model or adapter, materialized in a local folder the engine can read."""

    id: str
    path: Path
    manifest: Manifest
    weight_bytes: int
    # (path, sha256) of each file: what an engine on another host (a Ray node) fetches from the blob
    # store into a folder of its own, since ``path`` is a folder on the API server's disk.
    files: tuple[tuple[str, str], ...] = ()


GREEDY_BELOW = 1e-5  # vLLM's _SAMPLING_EPS


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: no limit
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: none; k: the chosen token's logprob plus the top k
    stop_token_ids: frozenset[int] = frozenset()
    # An llguidance grammar (``grammar.py``) the answer must match, enforced token by token; None: free text.
    grammar: str | None = None

    @property
    def greedy(self) -> bool:
        # Below GREEDY_BELOW, dividing logits by the temperature overflows to inf and softmax to NaN
        # (1e-45 is a denormal); the limit of sampling at such a temperature is the argmax anyway.
        # Written so that a NaN temperature is greedy too.
        return not self.temperature >= GREEDY_BELOW

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    base: Artifact
    adapter: Artifact | None
    prompt_ids: list[int]
    params: SamplingParams
    context_length: int
    # Whose cached prompt prefixes this request may reuse (the account): never another tenant's.
    cache_salt: str = ""


@dataclass(frozen=True)
class TokenStep:
    """One generated token; ``finish_reason`` is set on the last one ("stop" or "length")."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    finish_reason: str | None = None
    # On the first token only: how many of the prompt's tokens came from the prefix cache, not prefilled.
    cached_tokens: int = 0


@dataclass(frozen=True)
class Pooling:
    """How a sentence-transformers model turns token states into one vector."""

    mode: str  # "mean", "cls", "max" or "lasttoken"
    normalize: bool
    max_seq_length: int | None = None


class Engine(Protocol):
    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    async def prepare(self, request: GenerationRequest) -> None:
        """Load what ``request`` needs, so load failures answer with a status before a stream starts."""
        ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[TokenStep, None]:
        """Stream tokens; closing the iterator early cancels the sequence and frees its slot."""
        ...

    async def embed(self, model: Artifact, batch: list[list[int]], pooling: Pooling) -> list[list[float]]: ...

    def stats(self) -> dict[str, Any]:
        """Loaded models, adapters, queue depths: for logs, health and benchmarks."""
        ...


@runtime_checkable
class Preloading(Protocol):
    """An engine that can load a model before any request: an endpoint replica's, before it answers."""

    def preload(self, artifact: Artifact, context_length: int) -> None: ...
