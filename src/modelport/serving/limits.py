"""How much prompt a request may bring, checked in bytes before any tokenization.

Tokenizing is the first work a prompt costs, and it grows with the prompt: before these checks a
50 MB prompt was tokenized whole (43 s, 4.7 GB) only to be told it did not fit a 2,048-token context.
Text averages 3 to 5 bytes a token, so a prompt longer than its model's context times a generous
``bytes_per_token`` cannot fit, and is refused at once; ``max_bytes`` caps every model alike. Token-id
prompts are checked for length and for ids the tokenizer knows, so no engine ever sees one it cannot
embed (a CUDA device-side assert takes every request on the device down with it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from modelport.errors import ContextLengthExceeded, InvalidRequest
from modelport.settings import Settings

T = TypeVar("T")


def utf8_size_over(text: str, limit: int) -> int | None:
    """``text``'s UTF-8 size if it is over ``limit``, else None; encodes only when the length cannot tell."""
    if len(text) > limit:  # every character is at least one byte
        return len(text.encode())
    if 4 * len(text) <= limit:  # and at most four
        return None
    size = len(text.encode())
    return size if size > limit else None


def messages_text(messages: list[dict[str, Any]]) -> str:
    """What the messages bring to a template, as one string to measure: the strings as they are, the rest
    (content parts, names, fields clients add) as JSON."""
    return "".join(v if isinstance(v, str) else json.dumps(v) for m in messages for v in m.values())


@dataclass(frozen=True)
class PromptLimits:
    max_bytes: int = 4 * 2**20
    bytes_per_token: int = 32

    @classmethod
    def from_settings(cls, settings: Settings) -> PromptLimits:
        return cls(settings.max_prompt_bytes, settings.prompt_bytes_per_token)

    def cap(self, context: int) -> int:
        """Bytes of prompt (and characters of rendered chat template) a model with this context may get."""
        return min(self.max_bytes, context * self.bytes_per_token)

    def check_text(self, text: str, context: int, param: str) -> None:
        cap = self.cap(context)
        size = utf8_size_over(text, cap)
        if size is not None:
            raise ContextLengthExceeded(
                f"the {'messages' if param == 'messages' else 'prompt'} take {size} bytes; this model's context of "
                f"{context} tokens takes at most {cap} bytes of text ({self._why(cap)}), so it cannot fit. "
                "Please shorten it.",
                param=param,
            )

    def check_ids(self, ids: Sequence[int], vocab: int, param: str, *, context: int | None = None) -> list[int]:
        """Token ids as given, if every one is in the vocabulary (and, with ``context``, they fit it)."""
        if context is not None and len(ids) > context:
            raise ContextLengthExceeded(
                f"the prompt has {len(ids)} tokens; this model's maximum context length is {context} tokens",
                param=param,
            )
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is outside the vocabulary (0..{vocab - 1})", param=param)
        return list(ids)

    def check_total(self, texts: Sequence[str | list[int]], param: str) -> None:
        """All of one request's texts together, against the server-wide ceiling."""
        size = sum(len(t) for t in texts if isinstance(t, str))
        if size > self.max_bytes:
            raise ContextLengthExceeded(
                f"the inputs take {size} characters together, more than the {self.max_bytes} bytes one request "
                "may send (MODELPORT_MAX_PROMPT_BYTES); send them in several requests",
                param=param,
            )

    def embedding_chars(self, max_tokens: int) -> int:
        """Characters of an embedding input worth tokenizing: the model keeps ``max_tokens`` tokens, which
        ordinary text spells in far fewer characters than this."""
        return max_tokens * self.bytes_per_token

    def _why(self, cap: int) -> str:
        if cap == self.max_bytes:
            return "MODELPORT_MAX_PROMPT_BYTES"
        return f"{self.bytes_per_token} bytes per token, MODELPORT_PROMPT_BYTES_PER_TOKEN"


class TokenizerLanes:
    """Where prompts are tokenized: never on the event loop, and long ones one at a time.

    Tokenizing holds about 750 bytes of memory per token while it runs (the tokenizer's offsets,
    alignments and token strings), so a 4 MiB prompt takes some 500 MB for a few seconds. Prompts up to
    ``small_bytes`` run in the default thread pool; longer ones queue for a thread of their own, so a
    burst of them neither stacks that memory nor fills the thread pool every other request uses."""

    def __init__(self, small_bytes: int = 128 * 2**10) -> None:
        self.small_bytes = small_bytes
        self._long = ThreadPoolExecutor(1, thread_name_prefix="long-prompts")

    async def run(self, size: int, work: Callable[[], T]) -> T:
        if size <= self.small_bytes:
            return await asyncio.to_thread(work)
        return await asyncio.get_running_loop().run_in_executor(self._long, work)
