"""Tokenizers, chat templates and incremental detokenization with stop strings.

Shared by every engine: engines see token ids, this module owns the text around them.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelport.chat_template import MAX_RENDERED_CHARS, ChatTemplateError, TemplateBudgetError
from modelport.chat_template_workers import TemplateRenderer, default_renderer
from modelport.errors import ChatTemplateBudgetExceeded, InvalidRequest, TemplateMissing

# A few prompt tokens decoded in front of the output, so the first generated token keeps the leading
# space SentencePiece-style tokenizers only render after another token.
_PREFIX_TOKENS = 6
_MAX_CONTEXT_TOKENS = 64  # how far back a detokenizer looks for context past skipped special tokens


@dataclass
class TextModel:
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    chat_template: str | None
    eos_ids: frozenset[int]

    def encode(self, text: str, *, special: bool) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=special)
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    @property
    def vocab_size(self) -> int:
        """Token ids a prompt may use: the base vocabulary plus added tokens."""
        return len(self.tokenizer)

    def render_chat(
        self,
        name: str,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        renderer: TemplateRenderer | None = None,
        max_chars: int = MAX_RENDERED_CHARS,
    ) -> str:
        """Render the chat template under its budget, blocking (``arender_chat`` on the event loop)."""
        template = self._template(name)
        with _template_errors(name):
            return (renderer or default_renderer()).render(
                template, messages, add_generation_prompt=add_generation_prompt, max_chars=max_chars, **self._specials()
            )

    async def arender_chat(
        self, name: str, messages: list[dict[str, Any]], *, renderer: TemplateRenderer, owner: str, max_chars: int
    ) -> str:
        """Render in a worker process; ``owner`` (the account) is held to its share of the workers."""
        template = self._template(name)
        with _template_errors(name):
            return await renderer.arender(template, messages, owner=owner, max_chars=max_chars, **self._specials())

    def _template(self, name: str) -> str:
        if not self.chat_template:
            raise TemplateMissing(
                f"{name} has no chat template in its tokenizer files, so it cannot answer chat requests; "
                "use /v1/completions with a prompt instead",
                param="messages",
            )
        return self.chat_template

    def _specials(self) -> dict[str, Any]:
        return {f"{k}_token": getattr(self.tokenizer, f"{k}_token", None) for k in ("bos", "eos", "unk", "pad")}


@contextmanager
def _template_errors(name: str) -> Iterator[None]:
    try:
        yield
    except TemplateBudgetError as e:
        raise ChatTemplateBudgetExceeded(
            f"{name}'s chat template went over its budget for these messages: {e}", param="messages"
        ) from None
    except ChatTemplateError as e:
        raise InvalidRequest(f"the model's chat template rejected the messages: {e}", param="messages") from None


# transformers resolves its names lazily, and two threads doing that for the first time at once can see
# a half-initialised module (ImportError under a burst of first requests).
_IMPORT_LOCK = threading.Lock()


def load_text_model(path: Path) -> TextModel:
    with _IMPORT_LOCK:
        from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one answers chat
        template = template.get("default")
    return TextModel(tokenizer, template, _eos_ids(path, tokenizer))


def _eos_ids(path: Path, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = path / "generation_config.json"
    if gen.is_file():
        value = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(int(v) for v in (value if isinstance(value, list) else [value]) if v is not None)
    return frozenset(ids)


class TextModels:
    """An LRU of loaded tokenizers, keyed by model id. A burst of first requests for one model loads
    its tokenizer once: the others wait for that load instead of each doing their own."""

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, TextModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _cached(self, key: str) -> TextModel | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def get(self, key: str, path: Path) -> TextModel:
        if (hit := self._cached(key)) is not None:
            return hit
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            if (hit := self._cached(key)) is not None:
                return hit
            loaded = load_text_model(path)
            with self._lock:
                self._items[key] = loaded
                self._loading.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return loaded


class Detokenizer:
    """Turns a growing list of token ids into text deltas, cut at the first stop string.

    Text is held back while it could still be the start of a stop string or ends in an incomplete
    UTF-8 sequence, so a client never sees characters that later turn out to be part of a stop.
    """

    def __init__(self, text: TextModel, prompt_ids: list[int], stop: list[str]) -> None:
        self.text, self.stop = text, [s for s in stop if s]
        # Incremental decoding, as vLLM does it: each token decodes only a short window of the ids (the
        # tokens since the last text plus ``_PREFIX_TOKENS`` before them, for context: leading spaces and
        # merged bytes depend on them), so a long completion costs linear time, not a decode of everything
        # generated so far per token.
        self.tokens = list(prompt_ids[-_PREFIX_TOKENS:])
        self.prefix_offset, self.read_offset = 0, len(self.tokens)
        self.full = ""
        self.sent = 0
        self.stopped = False

    def add(self, token_id: int, *, last: bool) -> str:
        """Add one token; return the text that is now safe to send."""
        if self.stopped:
            return ""
        self.tokens.append(token_id)
        self.full += self._decode_new(last)
        cut = self._find_stop()
        if cut is not None:
            self.full, self.stopped = self.full[:cut], True
            last = True
        safe = len(self.full) if last else len(self.full) - self._held_for_stop()
        delta = self.full[self.sent : max(safe, self.sent)]
        self.sent += len(delta)
        return delta

    def _decode_new(self, last: bool) -> str:
        """The text the tokens since ``read_offset`` add; nothing yet while they end inside a character."""
        start = self.prefix_offset
        before = self.text.decode(self.tokens[start : self.read_offset])
        # Context that decodes to nothing (skipped special tokens) gives the decoder none: look further back.
        while not before and start > max(0, self.read_offset - _MAX_CONTEXT_TOKENS):
            start = max(0, start - _PREFIX_TOKENS)
            before = self.text.decode(self.tokens[start : self.read_offset])
        after = self.text.decode(self.tokens[start:])
        if after.endswith("\ufffd") and not last:
            return ""  # an incomplete UTF-8 sequence: wait for the tokens that finish it
        # The next window keeps a few decoded tokens before the new ones: a decoder may drop the first
        # token's leading space (SentencePiece's "first" scheme), which must never be a token still to come.
        self.read_offset = len(self.tokens)
        self.prefix_offset = max(0, self.read_offset - _PREFIX_TOKENS)
        return after[len(before) :]

    def _find_stop(self) -> int | None:
        hits = [i for i in (self.full.find(s, max(0, self.sent - len(s))) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_for_stop(self) -> int:
        """How many trailing characters could begin a stop string."""
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.full)), 0, -1):
                if self.full.endswith(s[:n]):
                    held = max(held, n)
                    break
        return held
