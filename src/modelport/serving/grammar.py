"""What a request allows the model to write: ``response_format`` and forced tool calls as grammars.

The grammars are llguidance's (https://github.com/guidance-ai/llguidance), the library vLLM, SGLang and
llama.cpp use for structured outputs: a JSON schema compiles to a grammar, which the engine turns into a
mask over the vocabulary before each token is chosen (``constraint.py``), so the answer parses whatever
the model's weights are. Everything here runs in the API server, before any work: a schema the library
cannot compile is a 400 naming it, never a failed stream.

The JSON is compact (``","`` and ``":"``, no whitespace at all): a weak model cannot loop on whitespace
inside the grammar until ``max_tokens``, and a streamed answer is byte for byte the answer the client
gets whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from llguidance import LLMatcher

from modelport.errors import InvalidRequest

MAX_SCHEMA_BYTES = 64 * 1024  # a schema is compiled per request and per token's mask: bounded by the server
JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
ANY_OBJECT: dict[str, Any] = {"type": "object"}


def json_grammar(schema: Any, param: str) -> str:
    """A grammar for JSON matching ``schema``; a 400 naming ``param`` when it is not a schema the library
    compiles (a bad ``$ref``, an invalid ``pattern``, a keyword it cannot honour)."""
    if not isinstance(schema, dict):
        raise InvalidRequest("the JSON schema must be an object", param=param)
    text = json.dumps(schema)
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidRequest(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", param=param)
    try:
        grammar = LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except ValueError as e:
        raise InvalidRequest(f"the JSON schema could not be read: {e}", param=param) from None
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise InvalidRequest(f"the JSON schema cannot be enforced: {first_line(error)}", param=param)
    return grammar


def first_line(error: str) -> str:
    """An llguidance error as a client reads it: its first line, at most 500 characters."""
    return error.strip().splitlines()[0][:500] if error.strip() else "unknown error"


def response_format_grammar(response_format: dict[str, Any] | None) -> str | None:
    """The grammar ``response_format`` asks for; None for free text.

    OpenAI's shapes: ``{"type": "json_object"}`` and ``{"type": "json_schema", "json_schema": {"name",
    "schema", "strict"}}``. Together's SDKs send the schema beside the type: ``{"type": "json_schema",
    "schema": {...}}`` or ``{"type": "json_object", "schema": {...}}``; both are read the same way."""
    if not response_format:
        return None
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind not in ("json_object", "json_schema"):
        raise InvalidRequest(
            f"response_format type {kind!r} is not supported; use text, json_object or json_schema",
            param="response_format",
        )
    schema = response_format.get("schema")
    nested = response_format.get("json_schema")
    if schema is None and isinstance(nested, dict):
        schema = nested.get("schema", ANY_OBJECT if kind == "json_schema" else None)
    if schema is None:
        if kind == "json_schema":
            raise InvalidRequest("response_format json_schema needs a schema", param="response_format")
        schema = ANY_OBJECT
    return json_grammar(schema, "response_format")


# --- tools -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """How a chat request with ``tools`` is answered.

    - ``auto``: the model decides; its calls are parsed from its text in ``format`` (``toolcalls.py``);
    - ``required``: the answer is a JSON array of ``{"name", "arguments"}`` calls, one of the tools each
      and their arguments valid, enforced by the grammar;
    - ``named``: the answer is the arguments of ``name``, enforced by the grammar."""

    mode: Literal["auto", "required", "named"]
    tools: tuple[Tool, ...]
    format: str | None = None
    name: str | None = None
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tools)


def read_tools(tools: list[Any]) -> tuple[Tool, ...]:
    """``tools`` as OpenAI sends them (``{"type": "function", "function": {"name", "parameters"}}``)."""
    read: list[Tool] = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(function, dict):
            raise InvalidRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param="tools")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"tools[{i}].function.name must be a non-empty string", param="tools")
        parameters = function.get("parameters") or ANY_OBJECT
        if not isinstance(parameters, dict):
            raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        read.append(Tool(name, parameters))
    if len({t.name for t in read}) != len(read):
        raise InvalidRequest("two tools have the same name", param="tools")
    return tuple(read)


def tool_plan(tools: tuple[Tool, ...], choice: Any, parallel: bool, fmt: str | None) -> ToolPlan | None:
    """The plan for ``tool_choice``; None when the tools are not to be used (``none``, or no tools)."""
    if choice == "none" or (not tools and choice in (None, "auto")):
        return None
    if not tools:
        raise InvalidRequest("tool_choice asks for a tool call, but the request has no tools", param="tool_choice")
    if choice in (None, "auto"):
        return ToolPlan("auto", tools, fmt, parallel=parallel)
    if choice == "required":
        return ToolPlan("required", tools, fmt, parallel=parallel)
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str):
        raise InvalidRequest(
            "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
            param="tool_choice",
        )
    if name not in {t.name for t in tools}:
        raise InvalidRequest(f"tool_choice names {name!r}, which is not one of the tools", param="tool_choice")
    return ToolPlan("named", tools, fmt, name=name, parallel=parallel)


def tool_grammar(plan: ToolPlan) -> str | None:
    """The grammar a forced call answers in: the named function's arguments, or an array of calls."""
    if plan.mode == "auto":
        return None
    if plan.mode == "named":
        tool = next(t for t in plan.tools if t.name == plan.name)
        return json_grammar(tool.parameters, "tools")
    # Each tool's schema becomes a definition of the array's schema, its own definitions beside it under
    # names of its own, with every reference rewritten: "#/$defs/X" in a Pydantic tool means its root.
    definitions: dict[str, Any] = {}
    one_of = []
    for i, t in enumerate(plan.tools):
        definitions |= _hoisted(t.parameters, f"tool{i}")
        one_of.append(
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": {"$ref": f"#/$defs/tool{i}"}},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    calls: dict[str, Any] = {"type": "array", "items": {"anyOf": one_of}, "minItems": 1, "$defs": definitions}
    if not plan.parallel:
        calls["maxItems"] = 1
    return json_grammar(calls, "tools")


def _hoisted(schema: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``schema`` as definition ``prefix`` and its ``$defs`` (or ``definitions``) as ``prefix.Name``, with
    each ``$ref`` to its root or its definitions pointing at their new places."""
    own = {k: v for k, v in schema.items() if k not in ("$defs", "definitions")}
    found = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}

    def rewrite(node: Any) -> Any:
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        if not isinstance(node, dict):
            return node
        out = {k: rewrite(v) for k, v in node.items()}
        ref = node.get("$ref")
        if isinstance(ref, str):
            if ref == "#":
                out["$ref"] = f"#/$defs/{prefix}"
            for home in ("#/$defs/", "#/definitions/"):
                if ref.startswith(home):
                    out["$ref"] = f"#/$defs/{prefix}.{ref.removeprefix(home)}"
        return out

    hoisted = {prefix: rewrite(own)}
    hoisted |= {f"{prefix}.{name}": rewrite(body) for name, body in found.items()}
    return hoisted
