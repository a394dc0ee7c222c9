"""Tool (function) calls parsed out of the text a chat model generated.

Models trained for tool use write their calls as text in a format their chat template teaches:

- ``hermes`` (Hermes 2 Pro, Qwen 2.5, Qwen 3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  blocks, with ordinary text before, between and after them.
- ``llama3_json`` (Llama 3.1/3.2): the whole answer, optionally after ``<|python_tag|>``, is one
  ``{"name": ..., "parameters": {...}}`` object or several separated by ``;``.
- ``mistral``: ``[TOOL_CALLS]`` then a JSON array of ``{"name", "arguments"}`` objects (older templates) or
  ``name[ARGS]{...}`` (newer templates, one per ``[TOOL_CALLS]``); text before the marker is content.

One incremental parser per format serves both a streamed answer (``ToolCallStream``) and a whole one
(``parse_tool_calls`` feeds it everything at once), so the two cannot disagree: however an answer is cut
into deltas, the calls are the same and the content deltas join to the same text. The one difference is
that ``parse_tool_calls`` strips the content's leading and trailing whitespace (the newlines around a
``<tool_call>`` block are layout, not an answer), while a stream passes whitespace through as it comes,
since it cannot know yet whether more text follows.

Calls are emitted whole, never as argument fragments: a call's text is held until it is complete and
parses, because a fragment cannot be taken back once a client has it. Text that looks like a call but is
not one (bad JSON, no name, arguments that are not an object, a call cut off by the end of the answer) is
given back as content, so nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

# The formats and how a template shows which one a model writes: in a module of their own, since ingest
# and the catalog read them too (re-exported here for the serving side).
from modelport.tool_formats import FORMATS, HERMES_MARKERS, MARKERS, MISTRAL_MARKER, PYTHON_TAG, detect_format

__all__ = [
    "FORMATS",
    "MARKERS",
    "CallDelta",
    "ContentDelta",
    "ToolCall",
    "ToolCallStream",
    "call_of",
    "calls_from_array",
    "detect_format",
    "new_call_id",
    "parse_tool_calls",
]

_HERMES_OPEN, _HERMES_CLOSE = HERMES_MARKERS
_PYTHON_TAG = PYTHON_TAG
_MISTRAL_MARKER = MISTRAL_MARKER
# A function name then [ARGS] (newer Mistral templates); the arguments' '{' may follow after whitespace.
_MISTRAL_NAMED = re.compile(r"\s*([A-Za-z0-9_.\-]+)\[ARGS\]\s*")
# What the text after [TOOL_CALLS] may look like while that name and [ARGS] are still being generated.
_MISTRAL_NAMED_SO_FAR = re.compile(r"\s*[A-Za-z0-9_.\-]+(?:\[(?:A(?:R(?:G(?:S)?)?)?)?)?")
_INVALID = object()  # what _loads returns for text that is not JSON (None is JSON's null)
_Accept = Callable[["ToolCall"], bool]  # whether a parsed call is one of the request's functions


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # compact JSON text of an object, as the OpenAI API carries arguments
    id: str  # "call_" + 24 lowercase hex characters, made when the call is parsed


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class CallDelta:
    index: int  # 0, 1, ... in the order of the calls in this answer
    call: ToolCall  # complete: a stream emits a call once its text is whole


_Event = ContentDelta | CallDelta
_Piece = str | ToolCall  # what the format parsers produce; ToolCallStream numbers the calls
_Outcome = Literal["wait", "fail"] | tuple[list[ToolCall], int]  # a call read so far: or (calls, end)


def parse_tool_calls(fmt: str, text: str, names: frozenset[str] | None = None) -> tuple[str | None, list[ToolCall]]:
    """``(content, calls)`` from a whole answer: content is the text outside the calls, stripped, or None.

    Text that looks like a call but does not parse, or calls a function not in ``names`` (when given),
    stays in content and makes no call.
    """
    stream = ToolCallStream(fmt, names)
    events = stream.feed(text) + stream.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentDelta)).strip()
    return content or None, [e.call for e in events if isinstance(e, CallDelta)]


class ToolCallStream:
    """Feed an answer's text as it is generated; get content to show at once and calls once each is whole.

    Content is held back only while it may still be the start of a call: a trailing partial marker (such
    as ``<tool`` at the end of a delta), or, for ``llama3_json``, an answer that begins like a JSON call.
    """

    def __init__(self, fmt: str, names: frozenset[str] | None = None) -> None:
        factory = _PARSERS.get(fmt)
        if factory is None:
            raise ValueError(f"unknown tool call format {fmt!r}; expected one of {', '.join(FORMATS)}")
        # Only the request's own functions are calls: a JSON answer that happens to hold a "name" (an
        # ordinary answer about a person, say) is content.
        self._parser = factory(lambda call: names is None or call.name in names)
        self._calls = 0
        self._finished = False

    def feed(self, delta: str) -> list[ContentDelta | CallDelta]:
        if self._finished:
            raise RuntimeError("the answer was finished; nothing more can be fed")
        return self._events(self._parser.push(delta, final=False))

    def finish(self) -> list[ContentDelta | CallDelta]:
        """End of the answer: flush what is held; an unfinished or unparseable call comes out as content."""
        if self._finished:
            return []
        self._finished = True
        return self._events(self._parser.push("", final=True))

    @property
    def calls(self) -> int:
        """How many calls were emitted so far."""
        return self._calls

    def _events(self, pieces: list[_Piece]) -> list[_Event]:
        events: list[_Event] = []
        for piece in pieces:
            if isinstance(piece, ToolCall):
                events.append(CallDelta(self._calls, piece))
                self._calls += 1
            elif piece and events and isinstance(events[-1], ContentDelta):
                events[-1] = ContentDelta(events[-1].text + piece)  # one delta per run of text
            elif piece:
                events.append(ContentDelta(piece))
        return events


class _Parser(Protocol):
    def push(self, delta: str, final: bool) -> list[_Piece]:
        """Take the next delta; return what is now decided. ``final`` marks the end of the answer."""
        ...


class _HermesParser:
    """``<tool_call>`` JSON ``</tool_call>`` blocks among ordinary text."""

    def __init__(self, accept: _Accept) -> None:
        self._accept = accept
        self._buf = ""  # outside a call: text not yet emitted; inside: the call's text after <tool_call>
        self._in_call = False
        self._searched = 0  # inside a call: _buf[:_searched] holds no closing tag, so is not searched again

    def push(self, delta: str, final: bool) -> list[_Piece]:
        self._buf += delta
        out: list[_Piece] = []
        while True:
            if not self._in_call:
                text, self._buf, found = _split_at_marker(self._buf, _HERMES_OPEN, final)
                out.append(text)
                if not found:
                    return out
                self._in_call, self._searched = True, 0
                continue
            end = self._buf.find(_HERMES_CLOSE, self._searched)
            if end < 0 and not final:
                self._searched = max(0, len(self._buf) - len(_HERMES_CLOSE) + 1)
                return out
            # No closing tag at the end of the answer: models sometimes stop on EOS before writing it.
            body = self._buf if end < 0 else self._buf[:end]
            call = _call_from_json(body, ("arguments",))
            self._in_call = False
            if call is None or not self._accept(call):
                out.append(_HERMES_OPEN)  # not a call after all: the tag is text; what followed is read again
            else:
                out.append(call)
                self._buf = "" if end < 0 else self._buf[end + len(_HERMES_CLOSE) :]


class _MistralParser:
    """``[TOOL_CALLS]`` then a JSON array of calls or ``name[ARGS]{...}``; text around them is content."""

    def __init__(self, accept: _Accept) -> None:
        self._accept = accept
        self._buf = ""  # outside a call: text not yet emitted; inside: the text after [TOOL_CALLS]
        self._in_call = False
        self._span: _JsonSpan | None = None  # once the array or arguments object has begun
        self._name: str | None = None  # the function's name in the [ARGS] form; None for an array
        self._start = 0  # where the array or arguments object begins in _buf
        self._scanned = 0  # how far the span has read _buf

    def push(self, delta: str, final: bool) -> list[_Piece]:
        self._buf += delta
        out: list[_Piece] = []
        while True:
            if not self._in_call:
                text, self._buf, found = _split_at_marker(self._buf, _MISTRAL_MARKER, final)
                out.append(text)
                if not found:
                    return out
                self._in_call, self._span = True, None
                continue
            outcome = self._read_call(final)
            if outcome == "wait":
                return out
            self._in_call = False
            if isinstance(outcome, tuple):
                calls, end = outcome
                out.extend(calls)
                self._buf = self._buf[end:]
            else:
                out.append(_MISTRAL_MARKER)  # not a call after all: the marker is text; what followed is read again

    def _read_call(self, final: bool) -> _Outcome:
        if self._span is None:
            begun = self._begin()
            if begun == "wait" and final:
                return "fail"
            if begun is not None:
                return begun
        assert self._span is not None  # _begin returned None: it set the span up
        end = self._span.advance(self._buf, self._scanned)
        if end is None:
            self._scanned = len(self._buf)
            return "fail" if final else "wait"
        raw = self._buf[self._start : end]
        if self._name is None:
            calls = _calls_from_array(raw)
        else:
            call = _make_call(self._name, _loads(raw))
            calls = [] if call is None else [call]
        return (calls, end) if calls and all(self._accept(c) for c in calls) else "fail"

    def _begin(self) -> Literal["wait", "fail"] | None:
        """Find where the array or the arguments object opens; None once found and the span is set up."""
        rest = self._buf.lstrip()
        if not rest:
            return "wait"
        if rest[0] == "[":
            self._name, self._start = None, len(self._buf) - len(rest)
        else:
            named = _MISTRAL_NAMED.match(self._buf)
            if named is None:
                return "wait" if _MISTRAL_NAMED_SO_FAR.fullmatch(self._buf) else "fail"
            if named.end() == len(self._buf):
                return "wait"
            if self._buf[named.end()] != "{":
                return "fail"
            self._name, self._start = named.group(1), named.end()
        self._span, self._scanned = _JsonSpan(), self._start
        return None


class _Llama3JsonParser:
    """The whole answer is the call(s): ``<|python_tag|>``? object (``;`` object)*, or it is all content."""

    def __init__(self, accept: _Accept) -> None:
        self._accept = accept
        self._buf = ""  # the answer so far, held while it may still be calls
        self._content = False  # decided: the answer is text, passed through as it comes
        self._pos: int | None = None  # how far the call grammar has read _buf, once the answer began like one
        self._want_object = True  # next: an object (at the start, after ';'), or else ';' or the end
        self._span: _JsonSpan | None = None  # inside an object
        self._object_start = 0
        self._calls: list[ToolCall] = []

    def push(self, delta: str, final: bool) -> list[_Piece]:
        if self._content:
            return [delta]
        self._buf += delta
        verdict = self._read(final)
        if verdict == "fail":
            # Released as soon as it cannot be calls, not at the end: the client sees text without delay.
            self._content = True
            text, self._buf = self._buf, ""
            return [text]
        if verdict == "wait":
            return []
        # Calls only at the end of the answer: text after the last object would make all of it content.
        return list(self._calls)

    def _read(self, final: bool) -> Literal["wait", "fail", "calls"]:
        if self._pos is None:
            self._pos = self._call_start()
            if self._pos is None:
                return "fail" if final else "wait"
            if self._pos < 0:
                return "fail"
        while self._pos < len(self._buf):
            if self._span is not None:
                if not self._read_object():
                    return "fail"
                continue
            char = self._buf[self._pos]
            if char.isspace():
                self._pos += 1
            elif self._want_object and char == "{":
                self._span, self._object_start = _JsonSpan(), self._pos
            elif not self._want_object and char == ";":
                self._want_object, self._pos = True, self._pos + 1
            else:
                return "fail"
        if not final:
            return "wait"
        return "calls" if self._calls and not self._want_object and self._span is None else "fail"

    def _call_start(self) -> int | None:
        """Where the first object may begin; None while undecided (blank, part of the tag); -1: not calls."""
        rest = self._buf.lstrip()
        lead = len(self._buf) - len(rest)
        if rest.startswith(_PYTHON_TAG):
            return lead + len(_PYTHON_TAG)
        if rest.startswith("{"):
            return lead
        return None if _PYTHON_TAG.startswith(rest) else -1

    def _read_object(self) -> bool:
        """Read on inside an object; once it closes it must be a call. False when it is not one."""
        assert self._span is not None and self._pos is not None
        end = self._span.advance(self._buf, self._pos)
        if end is None:
            self._pos = len(self._buf)
            return True
        # The whole answer is the call here, so an object is one only with its arguments' key too.
        raw = self._buf[self._object_start : end]
        call = _call_from_json(raw, ("parameters", "arguments"), required=True)
        if call is None or not self._accept(call):
            return False
        self._calls.append(call)
        self._span, self._pos, self._want_object = None, end, False
        return True


_PARSERS: dict[str, Callable[[_Accept], _Parser]] = {
    "hermes": _HermesParser,
    "llama3_json": _Llama3JsonParser,
    "mistral": _MistralParser,
}


class _JsonSpan:
    """Where a JSON array or object ends, read piece by piece: brackets are counted outside strings.

    Only the extent is found here; json.loads judges the text once it is whole. Reading incrementally
    keeps a long held call linear in its length however small the deltas.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def advance(self, text: str, start: int) -> int | None:
        """Read text[start:] (start at the opening bracket the first time); the index past the close, or None."""
        for i in range(start, len(text)):
            char = text[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "[{":
                self._depth += 1
            elif char in "]}":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1
        return None


def _split_at_marker(buf: str, marker: str, final: bool) -> tuple[str, str, bool]:
    """``(text to emit, rest, found)``: rest follows the marker when found, else is a held partial marker.

    At the end of the answer nothing is held: a partial marker is then just text.
    """
    at = buf.find(marker)
    if at >= 0:
        return buf[:at], buf[at + len(marker) :], True
    keep = 0 if final else _partial_marker_length(buf, marker)
    return buf[: len(buf) - keep], buf[len(buf) - keep :], False


def _partial_marker_length(text: str, marker: str) -> int:
    """The length of the longest end of text that begins the marker (and is shorter than it)."""
    for length in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:length]):
            return length
    return 0


def _calls_from_array(raw: str) -> list[ToolCall]:
    """All of a JSON array's calls, or none if any item is not a call (the array is then content)."""
    items = _loads(raw)
    if not isinstance(items, list):
        return []
    calls = [_call_from_object(item, ("arguments",)) for item in items]
    return [call for call in calls if call is not None] if None not in calls else []


def _call_from_json(raw: str, argument_keys: tuple[str, ...], *, required: bool = False) -> ToolCall | None:
    return _call_from_object(_loads(raw.strip()), argument_keys, required=required)


def _call_from_object(obj: object, argument_keys: tuple[str, ...], *, required: bool = False) -> ToolCall | None:
    """A call from ``{"name": ..., <argument key>: {...}}``; the first of argument_keys present counts.

    Missing arguments count as ``{}`` (models often leave them out for a function that takes none),
    unless ``required``.
    """
    if not isinstance(obj, dict):
        return None
    present = [key for key in argument_keys if key in obj]
    if required and not present:
        return None
    return _make_call(obj.get("name"), obj[present[0]] if present else {})


def _make_call(name: object, arguments: object) -> ToolCall | None:
    if not isinstance(name, str) or not name:
        return None
    if isinstance(arguments, str):
        arguments = _loads(arguments)  # some models write the arguments as a JSON string holding the object
    if not isinstance(arguments, dict):
        return None
    compact = json.dumps(arguments, separators=(",", ":"), ensure_ascii=False)
    return ToolCall(name=name, arguments=compact, id=new_call_id())


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _loads(text: str) -> object:
    """Parsed JSON, or _INVALID. NaN and Infinity are refused: they are not JSON and clients reject them."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; deep nesting overflows the stack
        return _INVALID


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# --- answers written under a grammar (tool_choice "required" or a named function) --------------------
def calls_from_array(text: str) -> list[ToolCall]:
    """The calls of a ``[{"name": ..., "arguments": {...}}, ...]`` answer; [] when it is not one."""
    return _calls_from_array(text)


def call_of(name: str, arguments: str) -> ToolCall | None:
    """A call of ``name`` with ``arguments`` (JSON text of an object); None when they are not one."""
    return _make_call(name, arguments)
