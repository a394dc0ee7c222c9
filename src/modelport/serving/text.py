"""Tokenizers, chat templates and incremental detokenization with stop strings.

Shared by every engine: engines see token ids, this module owns the text around them. The API server
imports neither transformers nor torch: a model's ``tokenizer.json`` runs in the ``tokenizers`` library,
set up from its side files the way transformers' fast tokenizers read them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, models, processors

from modelport.chat_template import MAX_RENDERED_CHARS, ChatTemplateError, TemplateBudgetError
from modelport.chat_template_workers import TemplateRenderer, default_renderer
from modelport.errors import ChatTemplateBudgetExceeded, EngineFailed, InvalidRequest, TemplateMissing
from modelport.tokenizer_files import find_chat_template, read_json

# A few prompt tokens decoded in front of the output, so the first generated token keeps the leading
# space SentencePiece-style tokenizers only render after another token.
_PREFIX_TOKENS = 6
_MAX_CONTEXT_TOKENS = 64  # how far back a detokenizer looks for context past skipped special tokens
_TEMPLATE_SPECIALS = ("bos", "eos", "unk", "pad")  # the special tokens chat templates are given
# transformers' ``clean_up_tokenization``: undo the spaces word-level tokenizers put before punctuation.
_CLEAN_UP = {" .": ".", " ?": "?", " !": "!", " ,": ",", " ' ": "'"} | {
    f" {contraction}": contraction for contraction in ("n't", "'m", "'s", "'ve", "'re")
}


@dataclass
class TextModel:
    tokenizer: Tokenizer
    chat_template: str | None
    eos_ids: frozenset[int]
    special_tokens: Mapping[str, str] = field(default_factory=dict)  # "bos" -> "<s>", ...
    clean_up_spaces: bool = False

    def encode(self, text: str, *, special: bool) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=special).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return _clean_up(text) if self.clean_up_spaces else text

    @property
    def vocab_size(self) -> int:
        """Token ids a prompt may use: the base vocabulary plus added tokens."""
        size: int = self.tokenizer.get_vocab_size(with_added_tokens=True)
        return size

    def render_chat(
        self,
        name: str,
        messages: list[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        renderer: TemplateRenderer | None = None,
        max_chars: int = MAX_RENDERED_CHARS,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render the chat template under its budget, blocking (``arender_chat`` on the event loop)."""
        template = self._template(name)
        with _template_errors(name):
            return (renderer or default_renderer()).render(
                template,
                messages,
                add_generation_prompt=add_generation_prompt,
                max_chars=max_chars,
                **self._context(tools),
            )

    async def arender_chat(
        self,
        name: str,
        messages: list[dict[str, Any]],
        *,
        renderer: TemplateRenderer,
        owner: str,
        max_chars: int,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """Render in a worker process; ``owner`` (the account) is held to its share of the workers.
        ``tools`` (OpenAI's function definitions) are given to the template as transformers'
        ``apply_chat_template(tools=...)`` gives them."""
        template = self._template(name)
        with _template_errors(name):
            return await renderer.arender(template, messages, owner=owner, max_chars=max_chars, **self._context(tools))

    def _template(self, name: str) -> str:
        if not self.chat_template:
            raise TemplateMissing(
                f"{name} has no chat template in its tokenizer files, so it cannot answer chat requests; "
                "use /v1/completions with a prompt instead",
                param="messages",
            )
        return self.chat_template

    def _context(self, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        """What a template is given beside the messages: the special tokens, and the tools if any."""
        specials: dict[str, Any] = {f"{k}_token": self.special_tokens.get(k) for k in _TEMPLATE_SPECIALS}
        return specials | ({"tools": tools} if tools else {})


def _clean_up(text: str) -> str:
    for before, after in _CLEAN_UP.items():
        text = text.replace(before, after)
    return text


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


def load_text_model(path: Path) -> TextModel:
    """The model's tokenizer as transformers' ``AutoTokenizer`` would load it from ``tokenizer.json``."""
    tokenizer = _read_tokenizer(path)
    # special_tokens_map.json is the older home of the special tokens: tokenizer_config.json wins.
    config = read_json(path / "special_tokens_map.json") | read_json(path / "tokenizer_config.json")
    named = _named_specials(config)
    # Like transformers: every special token is a special added token (never split, skipped when
    # decoding), even one that tokenizer.json lists only in its vocabulary, or lacks altogether.
    tokenizer.add_special_tokens([*named.values(), *_extra_specials(config)])
    names = {name: token.content for name, token in named.items()}
    _apply_add_flags(tokenizer, config, names)
    # The clean-up was written for word-level tokenizers; transformers skips it for BPE, where it would
    # eat spaces the model produced on purpose.
    clean_up = config.get("clean_up_tokenization_spaces") is True and not isinstance(tokenizer.model, models.BPE)
    eos_ids = _eos_ids(path, tokenizer.token_to_id(names["eos"]) if "eos" in names else None)
    return TextModel(tokenizer, find_chat_template(path), eos_ids, names, clean_up)


def _read_tokenizer(path: Path) -> Tokenizer:
    file = path / "tokenizer.json"
    if not file.is_file():
        raise EngineFailed(
            "the model has no tokenizer.json, and the server reads fast-tokenizer files only (not a "
            "SentencePiece tokenizer.model or vocab files alone): upload the model again with the "
            "tokenizer saved by transformers' tokenizer.save_pretrained(folder), which writes tokenizer.json"
        )
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises plain Exceptions for any malformed file
        raise EngineFailed(f"the model's tokenizer.json could not be read: {e}") from None
    # Padding and truncation saved in tokenizer.json are for training batches; transformers turns them
    # off unless a call asks, and the limits here are the server's own.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _named_specials(config: Mapping[str, Any]) -> dict[str, AddedToken]:
    """Every ``*_token`` entry holding a token, keyed by its name (``bos``, ``eos``, ``image``...):
    transformers counts model-specific names as special tokens too."""
    found = {key.removesuffix("_token"): _added_token(value) for key, value in config.items() if key.endswith("_token")}
    return {name: token for name, token in found.items() if token is not None}


def _extra_specials(config: Mapping[str, Any]) -> list[AddedToken]:
    """The unnamed special tokens: ``additional_special_tokens`` (``extra_special_tokens`` since transformers 5)."""
    values = config.get("extra_special_tokens") or config.get("additional_special_tokens")
    tokens = [_added_token(value) for value in (values if isinstance(values, list) else [])]
    return [token for token in tokens if token is not None]


def _added_token(value: Any) -> AddedToken | None:
    if isinstance(value, str):
        return AddedToken(value, special=True, normalized=False)
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        flags = {k: bool(value[k]) for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
        return AddedToken(value["content"], special=True, **flags)
    return None


def _apply_add_flags(tokenizer: Tokenizer, config: Mapping[str, Any], names: Mapping[str, str]) -> None:
    """Llama-style configs say whether to add BOS and EOS (``add_bos_token``, ``add_eos_token``). Where
    that disagrees with what tokenizer.json's post-processor adds, the config wins, as it did for
    transformers' Llama tokenizers; configs are what people edit, and save_pretrained keeps both in step."""
    bos, eos = names.get("bos"), names.get("eos")
    bos_id, eos_id = (tokenizer.token_to_id(t) if t else None for t in (bos, eos))
    probe = tokenizer.encode("", add_special_tokens=True).ids
    adds_bos = bos_id is not None and probe[:1] == [bos_id]
    adds_eos = eos_id is not None and len(probe) > adds_bos and probe[-1] == eos_id
    want_bos = _flag(config, "add_bos_token", adds_bos) and bos_id is not None
    want_eos = _flag(config, "add_eos_token", adds_eos) and eos_id is not None
    if (want_bos, want_eos) == (adds_bos, adds_eos):
        return
    # As transformers' ``update_post_processor`` builds it (pieces as a list: a token may hold spaces).
    single = [bos] * want_bos + ["$A"] + [eos] * want_eos
    used = [(bos, bos_id)] * want_bos + [(eos, eos_id)] * want_eos
    tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=used)


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key)
    return value if isinstance(value, bool) else default  # absent, or null: as tokenizer.json does it


def _eos_ids(path: Path, eos_id: int | None) -> frozenset[int]:
    ids: set[int] = {eos_id} if eos_id is not None else set()
    value = read_json(path / "generation_config.json").get("eos_token_id")
    ids.update(int(v) for v in (value if isinstance(value, list) else [value]) if v is not None)
    return frozenset(ids)


def special_ids(text: TextModel, tokens: tuple[str, ...]) -> dict[int, str]:
    """Those of ``tokens`` that are special in this tokenizer (decoding would drop them), by id."""
    specials = {t.content: i for i, t in text.tokenizer.get_added_tokens_decoder().items() if t.special}
    return {specials[t]: t for t in tokens if t in specials}


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

    def __init__(
        self, text: TextModel, prompt_ids: list[int], stop: list[str], keep: Mapping[int, str] | None = None
    ) -> None:
        self.text, self.stop = text, [s for s in stop if s]
        # Special tokens whose text the answer keeps (decoding skips special tokens): tool-call markers
        # such as Mistral's [TOOL_CALLS], which the tool-call parser reads.
        self.keep = keep or {}
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
        self.full += self._decode_new(last) + self.keep.get(token_id, "")
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
