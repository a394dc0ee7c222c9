"""Tool calls on OpenAI's wire: a choice's text read by its ``ToolPlan`` into ``message.tool_calls``,
whole or as the stream deltas the SDKs assemble.

- ``auto``: the model's own calls, parsed from its text in its format (``serving/toolcalls.py``);
- ``required``: the grammar made the answer a JSON array of calls;
- a named function: the grammar made the answer that function's arguments, streamed as they come.

``finish_reason`` is "tool_calls" when the model called tools and stopped (auto and required), and the
engine's otherwise: a named function answers "stop", as OpenAI's API does. Only the request's own
functions are calls; with ``parallel_tool_calls: false`` only the first call is kept. For the ``mistral``
format, call ids are 9 letters and digits: Mistral's templates refuse any other id when the call comes
back in the conversation.

In a stream, the first delta of each call carries its ``index``, ``id``, ``type`` and name; later ones
carry the index and a piece of ``arguments`` only: the openai SDK concatenates every string field it is
sent again, so an id or name sent twice would reach the caller doubled.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import replace
from typing import Any

from modelport.serving.grammar import ToolPlan
from modelport.serving.toolcalls import (
    CallDelta,
    ContentDelta,
    ToolCall,
    ToolCallStream,
    call_of,
    calls_from_array,
    new_call_id,
    parse_tool_calls,
)


def wire_call(call: ToolCall, index: int | None = None) -> dict[str, Any]:
    """A whole call as a message (no index) or a first stream delta (with its index) carries it."""
    wire = {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    return wire if index is None else {"index": index} | wire


_ALNUM = string.ascii_letters + string.digits


def _call_id(plan: ToolPlan) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(9)) if plan.format == "mistral" else new_call_id()


def _kept(plan: ToolPlan, calls: list[ToolCall]) -> list[ToolCall]:
    """The calls as answered: ids in the model's style, and one only unless parallel calls are allowed."""
    calls = calls if plan.parallel else calls[:1]
    return [replace(c, id=_call_id(plan)) for c in calls] if plan.format == "mistral" else calls


def read_answer(plan: ToolPlan, text: str, finish: str | None) -> tuple[str | None, list[ToolCall], str | None]:
    """``(content, calls, finish_reason)`` of one choice's whole answer."""
    if plan.mode == "named":
        assert plan.name is not None
        call = call_of(plan.name, text)  # None only when cut short by max_tokens: the text is kept as is
        return None, _kept(plan, [call or ToolCall(plan.name, text, new_call_id())]), finish
    if plan.mode == "required":
        calls = calls_from_array(text)
        content: str | None = None if calls else text
    elif plan.format is not None:
        content, calls = parse_tool_calls(plan.format, text, plan.names)
    else:  # a template this server cannot read calls from: the answer is text
        content, calls = text, []
    calls = _kept(plan, calls)
    return content, calls, "tool_calls" if calls and finish == "stop" else finish


class ChoiceStream:
    """One choice of a streamed answer with tools: text deltas in, OpenAI ``delta`` objects out."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.parser = ToolCallStream(plan.format, plan.names) if plan.mode == "auto" and plan.format else None
        self.held = ""  # a required answer, read whole at the end
        self.named_id: str | None = None
        self.calls = 0

    def feed(self, text: str) -> list[dict[str, Any]]:
        if not text:
            return []
        if self.plan.mode == "named":
            return [self._named(text)]
        if self.plan.mode == "required":
            self.held += text
            return []
        if self.parser is None:
            return [{"content": text}]
        return [d for event in self.parser.feed(text) if (d := self._delta(event)) is not None]

    def finish(self, reason: str) -> tuple[list[dict[str, Any]], str]:
        """What is still held, and the choice's finish_reason."""
        deltas: list[dict[str, Any]] = []
        if self.plan.mode == "named":
            if self.named_id is None:  # an empty answer still names the call
                deltas.append(self._named(""))
            return deltas, reason
        if self.plan.mode == "required":
            calls = _kept(self.plan, calls_from_array(self.held))
            deltas = [{"tool_calls": [wire_call(c, i)]} for i, c in enumerate(calls)]
            if not calls and self.held:
                deltas = [{"content": self.held}]
            self.calls = len(calls)
        elif self.parser is not None:
            deltas = [d for event in self.parser.finish() if (d := self._delta(event)) is not None]
        return deltas, "tool_calls" if self.calls and reason == "stop" else reason

    def _named(self, text: str) -> dict[str, Any]:
        if self.named_id is None:
            self.named_id = _call_id(self.plan)
            assert self.plan.name is not None
            return {"tool_calls": [wire_call(ToolCall(self.plan.name, text, self.named_id), 0)]}
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    def _delta(self, event: ContentDelta | CallDelta) -> dict[str, Any] | None:
        if isinstance(event, ContentDelta):
            return {"content": event.text}
        if self.calls and not self.plan.parallel:
            return None  # one call only: the rest are dropped, as in the whole answer
        self.calls += 1
        (call,) = _kept(self.plan, [event.call])
        return {"tool_calls": [wire_call(call, event.index)]}
