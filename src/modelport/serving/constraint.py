"""Grammar-constrained decoding in the engine: a mask of the tokens a row's grammar allows next.

``Vocabulary`` is llguidance's view of one model's tokenizer: the bytes each token id writes. It is built
once per base model (llguidance parses ``tokenizer.json`` itself for byte-level BPE and SentencePiece
with byte fallback, the tokenizers of nearly every published model; for a SentencePiece-style BPE
without byte fallback, like the demo model's, the bytes are read off the pieces here). ``Constraint``
follows one row: before each token it writes the row's mask into a bitmask (one bit per token id,
32 to an int32, as llguidance lays it out), and after the token is chosen it advances the grammar.

Rows without a grammar cost nothing here: masks are computed for constrained rows only, and the
sampler applies them to those rows only.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from llguidance import LLExecutor, LLMatcher, LLParserLimits, LLTokenizer, TokenizerWrapper
from tokenizers import Tokenizer

from modelport.errors import InvalidRequest
from modelport.serving.grammar import first_line
from modelport.serving.text import TextModel

METASPACE = "\u2581"  # SentencePiece's word boundary: a space in the text
# A tenant's grammar runs before every token of its row, while the whole batch waits: these caps bound
# what one grammar may cost per token and in memory (llguidance's defaults, meant for a single user, are
# 200k lexer fuel, about 15 ms, 50k Earley items and 250k lexer states, hundreds of MB). A grammar that
# reaches one fails its own row only (``Constraint.failed``).
LIMITS = dict(
    step_lexer_fuel=50_000,  # ~14k a millisecond
    step_max_items=20_000,  # ~20k a millisecond
    max_lexer_states=50_000,  # 1-2 kB each
    max_grammar_size=200_000,
    verbose_errors=False,  # errors reach the client: no parser state in them
)
COMPILED_CACHE = 64  # grammars compiled per model, kept to be copied for the next request with the same one


def _limits() -> LLParserLimits:
    return LLParserLimits(**LIMITS)  # type: ignore[arg-type]


class _PieceTokenizer:
    """llguidance's ``TokenizerWrapper`` contract for a tokenizer it cannot parse: the bytes of every
    token, and an encoder whose tokens spell exactly the bytes given (longest match first)."""

    def __init__(self, tokenizer: Tokenizer, eos: int, bos: int | None) -> None:
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        special = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        pieces = [tokenizer.id_to_token(i) for i in range(size)]
        self.tokens: list[bytes] = [
            b"" if i in special or p is None else p.replace(METASPACE, " ").encode() for i, p in enumerate(pieces)
        ]
        self.special_token_ids = sorted(special)
        self.eos_token_id, self.bos_token_id = eos, bos
        self._by_bytes: dict[bytes, int] = {}
        for i, piece in enumerate(self.tokens):
            if piece and i not in special:
                self._by_bytes.setdefault(piece, i)
        self._longest = max((len(p) for p in self._by_bytes), default=1)

    def __call__(self, text: bytes | str) -> list[int]:
        data = text.encode() if isinstance(text, str) else text
        ids, at = [], 0
        while at < len(data):
            for n in range(min(self._longest, len(data) - at), 0, -1):
                token = self._by_bytes.get(data[at : at + n])
                if token is not None:
                    ids.append(token)
                    at += n
                    break
            else:
                at += 1  # a byte no token writes: the grammar can never produce it anyway
        return ids


class Vocabulary:
    """One base model's tokenizer as llguidance sees it, and its compiled grammars (an LRU)."""

    def __init__(self, text: TextModel, logits_width: int) -> None:
        eos = sorted(text.eos_ids)
        if not eos:
            raise InvalidRequest("this model names no end-of-sequence token, so a constrained answer could not end")
        width = max(logits_width, text.vocab_size)
        try:
            self.tokenizer = LLTokenizer(text.tokenizer.to_str(), n_vocab=width, eos_token=eos)
        except ValueError:  # a decoder llguidance does not know: read the pieces here
            bos_token = text.special_tokens.get("bos")
            bos = text.tokenizer.token_to_id(bos_token) if bos_token else None
            wrapper = TokenizerWrapper(_PieceTokenizer(text.tokenizer, eos[0], bos))
            self.tokenizer = LLTokenizer(wrapper, n_vocab=width, eos_token=eos)
        self.words = (width + 31) // 32  # int32 words of one row's bitmask
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def constraint(self, grammar: str) -> Constraint:
        """A fresh row state for ``grammar``; a 400 when it cannot run on this tokenizer."""
        with self._lock:
            compiled = self._compiled.get(grammar)
            if compiled is not None:
                self._compiled.move_to_end(grammar)
                return Constraint(compiled.deep_copy(), self.words)
        matcher = LLMatcher(self.tokenizer, grammar, log_level=0, limits=_limits())  # drops the GIL
        if matcher.is_error():
            raise InvalidRequest(f"the grammar cannot be enforced for this model: {first_line(matcher.get_error())}")
        if not self._can_begin(matcher):
            raise InvalidRequest(
                "no token of this model's vocabulary can begin an answer in the requested format "
                "(response_format or a forced tool call)"
            )
        with self._lock:
            self._compiled[grammar] = matcher.deep_copy()  # checked: a copy of it needs no check again
            while len(self._compiled) > COMPILED_CACHE:
                self._compiled.popitem(last=False)
        return Constraint(matcher, self.words)

    def _can_begin(self, matcher: LLMatcher) -> bool:
        """Whether some token can begin the answer. Where none can, llguidance allows end-of-sequence
        alone: the answer would be empty, and not what the grammar asks for."""
        allowed = int.from_bytes(matcher.compute_bitmask(), "little")
        for eos in self.tokenizer.eos_tokens:
            allowed &= ~(1 << eos)
        return allowed != 0 or matcher.is_accepting()


_executor: list[LLExecutor] = []  # one per process, made at the first constrained batch
_executor_lock = threading.Lock()


def fill_all(constraints: list[Constraint], bitmask: Any) -> None:
    """Row ``i`` of ``bitmask`` (contiguous CPU int32) gets ``constraints[i]``'s mask: all rows at once, on
    llguidance's own threads and without the GIL, so masks cost the batch the slowest row, not their sum."""
    with _executor_lock:
        if not _executor:
            _executor.append(LLExecutor())
    rows, words = bitmask.shape
    matchers = [(c.matcher, i) for i, c in enumerate(constraints)]
    _executor[0].unsafe_compute_mask_ptr(matchers, bitmask.data_ptr(), words * bitmask.element_size(), rows)


class Constraint:
    """One row's grammar state: which tokens may come next, and what the chosen ones did to it."""

    def __init__(self, matcher: LLMatcher, words: int) -> None:
        self.matcher, self.words = matcher, words  # ``words``: int32 words in a row of the bitmask

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed-token bits into ``bitmask[row]`` (a contiguous CPU int32 tensor)."""
        view = bitmask[row]
        self.matcher.unsafe_compute_mask_ptr(view.data_ptr(), view.numel() * view.element_size())

    def advance(self, token: int) -> bool:
        """Take the chosen token; True when the grammar is complete and nothing more may follow."""
        self.matcher.consume_token(token)
        return bool(self.matcher.is_stopped() or self.matcher.is_error())

    @property
    def failed(self) -> str | None:
        return first_line(self.matcher.get_error()) if self.matcher.is_error() else None
